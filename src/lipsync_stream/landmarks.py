"""Face landmarks per frame: MediaPipe's 478-point face mesh, gap-filled and smoothed without lag.

The mesh model ships inside the mediapipe wheel (offline). Characters keep all 478 points per
frame in 512x512 pixels; the engines use the lips, jaw, chin and nose. Smoothing is a
Savitzky-Golay filter applied over the whole clip, which is symmetric in time, so it removes
detector jitter without the lag a causal filter would add.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .faces import FaceError

log = logging.getLogger(__name__)

N_POINTS = 478
QUANT = 16.0  # stored as int16 sixteenths of a pixel

# MediaPipe face-mesh indices (image left to right where it applies).
LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
JAW = [58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288]  # cheek to cheek under the chin
CHIN = 152
NOSE_TIP, NOSE_BOTTOM = 1, 2
NOSE_WINGS = [98, 327]
CHEEKS = [205, 425, 207, 427]  # below the cheekbones, beside the mouth
MOUTH_CORNERS = (61, 291)
EYE_OUTER = (33, 263)
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]


class FaceMesher:
    """MediaPipe FaceMesh in video mode (it tracks between frames). One per thread."""

    def __init__(self, video: bool = True) -> None:
        from .mediapipe_models import solutions

        self._mesh = solutions().face_mesh.FaceMesh(static_image_mode=not video, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5, min_tracking_confidence=0.5)

    def __enter__(self) -> "FaceMesher":
        return self

    def __exit__(self, *exc: object) -> None:
        self._mesh.close()

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """(478, 2) float32 pixel coordinates of the face in a BGR image, or None."""
        h, w = image.shape[:2]
        result = self._mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        return np.array([(p.x * w, p.y * h) for p in lm], dtype=np.float32)


def savgol_coefficients(window: int, order: int) -> np.ndarray:
    """Smoothing weights of a centred Savitzky-Golay filter (least-squares polynomial fit)."""
    half = window // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    vander = np.vander(x, order + 1, increasing=True)
    return np.linalg.pinv(vander)[0]


def smooth_track(points: np.ndarray, window: int = 7, order: int = 2) -> np.ndarray:
    """Zero-phase smoothing along axis 0 (time); keeps peaks better than a moving average."""
    n = len(points)
    if n < window:
        return points.copy()
    coeffs = savgol_coefficients(window, order)
    half = window // 2
    # Point reflection at the ends keeps steady motion steady up to the first and last frame.
    padded = np.concatenate([2 * points[:1] - points[half:0:-1], points, 2 * points[-1:] - points[-2 : -half - 2 : -1]])
    out = np.zeros_like(points, dtype=np.float64)
    for i, c in enumerate(coeffs):
        out += c * padded[i : i + n]
    return out.astype(points.dtype)


def _ranges(indices: np.ndarray) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in indices.tolist():
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def fill_gaps(points: np.ndarray, found: np.ndarray, fps: float = 30.0, max_gap: int = 6) -> np.ndarray:
    """Interpolate frames where no face was found; a longer gap is an error naming the frames."""
    if not found.any():
        raise FaceError("no face found in any frame of the video")
    missing = np.flatnonzero(~found)
    if len(missing) == 0:
        return points
    gaps = _ranges(missing)
    long = [(a, b) for a, b in gaps if b - a + 1 > max_gap]
    if long:
        shown = ", ".join(f"frames {a}-{b} ({a / fps:.2f}-{(b + 1) / fps:.2f} s)" for a, b in long[:5])
        more = f" and {len(long) - 5} more" if len(long) > 5 else ""
        raise FaceError(f"no face in {shown}{more}; trim the video to a part where the face is always visible")
    idx = np.flatnonzero(found)
    out = points.copy()
    flat = out.reshape(len(out), -1)
    src = points.reshape(len(points), -1)[idx]
    for j in range(flat.shape[1]):
        flat[missing, j] = np.interp(missing, idx, src[:, j])
    log.info("face not found in %d frame(s); interpolated from their neighbours", len(missing))
    return out


def track_landmarks(frames: Sequence[np.ndarray] | np.ndarray, progress: Callable[[int], None] | None = None, fps: float = 30.0) -> np.ndarray:
    """(N, 478, 2) landmarks for *frames*, gaps filled and smoothed over time."""
    n = len(frames)
    points = np.zeros((n, N_POINTS, 2), dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    with FaceMesher() as mesher:
        for i, frame in enumerate(frames):
            lm = mesher.landmarks(frame)
            if lm is not None:
                points[i] = lm
                found[i] = True
            if progress:
                progress(1)
    points = fill_gaps(points, found, fps)
    return smooth_track(points)


@dataclass(frozen=True)
class Landmarks:
    """Per-frame face-mesh points of a character, in 512x512 pixels."""

    points: np.ndarray  # (N, 478, 2) float32

    def __len__(self) -> int:
        return len(self.points)

    def save(self, path: Path) -> None:
        q = np.round(self.points * QUANT).clip(-32768, 32767).astype(np.int16)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, points=q, scale=np.float32(QUANT))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Landmarks":
        try:
            with np.load(path, allow_pickle=False) as data:
                q, scale = data["points"], float(data["scale"])
        except (OSError, ValueError, KeyError) as exc:
            raise FaceError(f"cannot read landmarks {path.name}: {exc}") from None
        if q.ndim != 3 or q.shape[1:] != (N_POINTS, 2) or q.dtype.kind not in "iu" or not np.isfinite(scale) or scale <= 0:
            raise FaceError(f"landmarks {path.name} must hold integer (frames, {N_POINTS}, 2) points, got {q.dtype} {q.shape}")
        points = q.astype(np.float32) / scale
        if len(points) == 0 or points.min() < -512 or points.max() > 1024:
            raise FaceError(f"landmarks {path.name} are empty or lie far outside the 512x512 frame")
        return cls(points)

    def mouths(self) -> np.ndarray:
        """Closed-mouth geometry per frame: (cx, cy, half_width, angle) from the lip corners."""
        left, right = self.points[:, MOUTH_CORNERS[0]], self.points[:, MOUTH_CORNERS[1]]
        inner = 0.5 * (self.points[:, 13] + self.points[:, 14])
        cx = 0.5 * (left[:, 0] + right[:, 0])
        cy = inner[:, 1]
        d = right - left
        half = 0.5 * np.hypot(d[:, 0], d[:, 1])
        angle = np.arctan2(d[:, 1], d[:, 0])
        return np.stack([cx, cy, half, angle], axis=1).astype(np.float32)

    def boxes(self, size: int = 512) -> np.ndarray:
        """Face boxes (y1, y2, x1, x2) from the face oval, Wav2Lip style, inside the frame."""
        oval = self.points[:, FACE_OVAL]
        y1, y2 = oval[:, :, 1].min(axis=1), oval[:, :, 1].max(axis=1)
        x1, x2 = oval[:, :, 0].min(axis=1), oval[:, :, 0].max(axis=1)
        boxes = np.stack([y1, y2, x1, x2], axis=1)
        return np.clip(np.round(boxes), 0, size).astype(np.int32)
