"""Face landmarks per frame: MediaPipe's 478-point face mesh, gap-filled and smoothed without lag.

The mesh model ships in this package as ONNX (:mod:`.facemodels`; offline). Characters keep all 478 points per
frame in 512x512 pixels; the engines use the lips, jaw, chin and nose. Smoothing is a
Savitzky-Golay filter applied over the whole clip, which is symmetric in time, so it removes
detector jitter without the lag a causal filter would add.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .facemodels import MESH_FILE, FaceMeshTracker, session
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
MOUTH_CORNERS = (61, 291)
EYE_OUTER = (33, 263)
UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID = 13, 14  # the inner lips at the middle: their gap is the opening
UPPER_LIP_OUTER_MID, LOWER_LIP_OUTER_MID = 0, 17
#: points a mouth warp holds still: nose, eyes, cheekbones, temples
STILL_POINTS = [NOSE_TIP, NOSE_BOTTOM, *NOSE_WINGS, 195, *EYE_OUTER, 50, 280, 116, 345, 234, 454]
#: skin around the lips that moves with them, so that a warp stays local
UPPER_LIP_SKIN = [164, 165, 391, 92, 322]  # between the nose and the upper lip
LOWER_LIP_SKIN = [18, 83, 313, 182, 406, 43, 273, 106, 335]  # just under the lower lip
CHIN_SKIN = [200, 199, 175]  # down the chin
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]


class MouthFrame:
    """The mouth's own coordinates: origin between the corners, x along them, unit = mouth width."""

    def __init__(self, lm: np.ndarray) -> None:
        left, right = lm[MOUTH_CORNERS[0]].astype(np.float64), lm[MOUTH_CORNERS[1]].astype(np.float64)
        d = right - left
        self.width = max(float(np.hypot(*d)), 8.0)
        self.ex = d / self.width
        self.ey = np.array([-self.ex[1], self.ex[0]])
        self.origin = 0.5 * (left + right)

    def to_uv(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.origin) / self.width
        return np.stack([q @ self.ex, q @ self.ey], axis=-1)

    def to_xy(self, uv: np.ndarray) -> np.ndarray:
        return self.origin + self.width * (uv[..., :1] * self.ex + uv[..., 1:] * self.ey)


class FaceMesher:
    """MediaPipe's attention face mesh through ONNX Runtime (:mod:`.facemodels`); in video mode it
    follows the face from frame to frame. One per thread (it holds the tracked region)."""

    def __init__(self, video: bool = True) -> None:
        session(MESH_FILE)  # a missing model is an error now, not at the first frame
        self._tracker = FaceMeshTracker(video=video)

    def __enter__(self) -> FaceMesher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (the sessions are shared); kept so callers can scope a mesher."""

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """(478, 2) float32 pixel coordinates of the face in a BGR image, or None."""
        return self._tracker.landmarks_rgb(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


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


class LandmarkTracker:
    """Face-mesh points for frames that arrive one at a time (while a video is being decoded).

    Only the points are kept, never the frames; :meth:`result` fills gaps and smooths.
    """

    def __init__(self, fps: float = 30.0) -> None:
        self.fps = fps
        self._mesher: FaceMesher | None = None
        self._points: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self._points)

    def add(self, frame: np.ndarray) -> None:
        if self._mesher is None:
            self._mesher = FaceMesher()
        self._points.append(self._mesher.landmarks(frame))

    def close(self) -> None:
        if self._mesher is not None:
            self._mesher.close()
            self._mesher = None

    def result(self) -> np.ndarray:
        """(N, 478, 2) landmarks, gaps filled and smoothed over time; closes the mesher."""
        self.close()
        n = len(self._points)
        points = np.zeros((n, N_POINTS, 2), dtype=np.float32)
        found = np.array([p is not None for p in self._points], dtype=bool)
        for i, p in enumerate(self._points):
            if p is not None:
                points[i] = p
        return smooth_track(fill_gaps(points, found, self.fps))


def track_landmarks(frames: Sequence[np.ndarray] | np.ndarray, progress: Callable[[int], None] | None = None, fps: float = 30.0) -> np.ndarray:
    """(N, 478, 2) landmarks for *frames*, gaps filled and smoothed over time."""
    tracker = LandmarkTracker(fps)
    try:
        for frame in frames:
            tracker.add(frame)
            if progress:
                progress(1)
        return tracker.result()
    finally:
        tracker.close()


def _read_npz_array(archive: zipfile.ZipFile, name: str, max_bytes: int, check: Callable[[tuple[int, ...], np.dtype], str | None]) -> np.ndarray:
    """One array of an .npz, its declared sizes checked before anything is inflated.

    The zip entry's uncompressed size must be at most *max_bytes*, and *check* sees the array's
    shape and dtype from its header (returns what is wrong, or None) before its data is read.
    """
    try:
        info = archive.getinfo(name + ".npy")
    except KeyError:
        raise FaceError(f"has no '{name}' array") from None
    if info.file_size > max_bytes:
        raise FaceError(f"its '{name}' array would inflate to {info.file_size} bytes; a character of at most the allowed length needs {max_bytes}")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise FaceError(f"its '{name}' array has an unknown .npy version {version}")
        problem = check(shape, dtype) if not dtype.hasobject else "holds objects"
        if problem:
            raise FaceError(f"its '{name}' array {problem}")
        count = math.prod(shape)
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise FaceError(f"its '{name}' array is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


@dataclass(frozen=True)
class Landmarks:
    """Per-frame face-mesh points of a character, in 512x512 pixels."""

    points: np.ndarray  # (N, 478, 2) float32

    def __len__(self) -> int:
        return len(self.points)

    def save(self, path: Path) -> None:
        q = np.round(self.points * QUANT).clip(-32768, 32767).astype(np.int16)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, points=q, scale=np.float32(QUANT))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, max_frames: int) -> Landmarks:
        """Read a ``.landmarks.npz`` with bounded memory: at most *max_frames* frames.

        The file may come from a client's URL: its declared sizes are checked against what a
        character of *max_frames* can need before anything is inflated.
        """

        def points_shape(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
            if len(shape) != 3 or shape[1:] != (N_POINTS, 2) or dtype.kind not in "iu":
                return f"must hold integer (frames, {N_POINTS}, 2) points, got {dtype} {shape}"
            if not 0 < shape[0] <= max_frames:
                return f"holds {shape[0]} frames; a character has 1 to {max_frames}"
            return None

        def scalar(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
            return None if shape == () and dtype.kind in "iuf" else f"must be one number, got {dtype} {shape}"

        try:
            with zipfile.ZipFile(path) as archive:
                q = _read_npz_array(archive, "points", max_frames * N_POINTS * 2 * 8 + 4096, points_shape)
                scale = float(_read_npz_array(archive, "scale", 4096, scalar))
        except FaceError as exc:
            raise FaceError(f"landmarks {path.name}: {exc}") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise FaceError(f"cannot read landmarks {path.name}: {exc}") from None
        if not np.isfinite(scale) or scale <= 0:
            raise FaceError(f"landmarks {path.name} have a scale of {scale}; it must be a positive number")
        points = q.astype(np.float32) / scale
        if points.min() < -512 or points.max() > 1024:
            raise FaceError(f"landmarks {path.name} lie far outside the 512x512 frame")
        return cls(points)

    def mouths(self) -> np.ndarray:
        """Closed-mouth geometry per frame: (cx, cy, half_width, angle) from the lip corners."""
        left, right = self.points[:, MOUTH_CORNERS[0]], self.points[:, MOUTH_CORNERS[1]]
        inner = 0.5 * (self.points[:, UPPER_LIP_INNER_MID] + self.points[:, LOWER_LIP_INNER_MID])
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
