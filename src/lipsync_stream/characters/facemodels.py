"""MediaPipe's face detectors and attention face mesh, run by ONNX Runtime.

The models are MediaPipe's own (Apache-2.0; ``models/LICENSE``), converted once from the TFLite
files inside its 0.10.14 wheel by ``tools/convert_face_models.py`` and shipped in the package: no
download, no MediaPipe, no protobuf pin. Around them, what MediaPipe's graphs do, step by step:

- detection: the whole image letterboxed to the model's square input (zeros around), SSD anchors,
  sigmoid scores, weighted non-maximum suppression (overlapping boxes averaged by score);
- the face's region: the box (or, when tracking, the previous frame's landmarks' box) turned by
  the angle of the eyes, made square on its long side and grown by 1.5;
- the mesh: that region warped to 192x192 (edges replicated), 468 points plus the refined lips,
  eyes and irises (478), projected back; a face-presence score under 0.5 means the face was lost.

One difference: when the tracked face is lost, MediaPipe leaves that frame without landmarks and
detects again on the next; here the same frame is detected again at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .face_errors import FaceModelMissing

MODELS = Path(__file__).resolve().parent / "models"
MESH_FILE = "face_landmark_with_attention.onnx"
N_MESH = 468
N_POINTS = 478
#: the attention model's refined points, by mesh index (the order of its lips and eye outputs)
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415, 76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408, 62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407]
LEFT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173, 130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190, 226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189, 35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245, 156, 70, 63, 105, 66, 107, 55, 193]
RIGHT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398, 359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414, 446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413, 265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465, 383, 300, 293, 334, 296, 336, 285, 417]
LEFT_IRIS, RIGHT_IRIS = list(range(468, 473)), list(range(473, 478))
#: the eye corners whose line gives a tracked face's angle (image left to right)
ROTATION_POINTS = (33, 263)
#: the mesh model's outputs, in the order it is asked for them
MESH_OUTPUTS = ["output_mesh_identity", "output_lips", "output_left_eye", "output_right_eye", "output_left_iris", "output_right_iris", "conv_faceflag"]
MESH_SIZE = 192
ROI_SCALE = 1.5
PRESENCE_MIN = 0.5


@dataclass(frozen=True)
class DetectorSpec:
    """A detector's input size and SSD anchor layout (MediaPipe's face_detection_*.pbtxt)."""

    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]  # per stride: one anchor, or two (the interpolated scale too)


SHORT_RANGE = DetectorSpec("face_detection_short_range.onnx", 128, (8, 16), (2, 6))
FULL_RANGE = DetectorSpec("face_detection_full_range.onnx", 192, (4,), (1,))
NMS_OVERLAP = 0.3


def available() -> bool:
    """Whether the face models are here (they ship in the package; a trimmed install may lack them)."""
    return all((MODELS / name).is_file() for name in (SHORT_RANGE.file, FULL_RANGE.file, MESH_FILE))


@cache
def session(name: str) -> Any:
    """One ONNX Runtime session per model, shared by every thread (``run`` is thread-safe)."""
    import onnxruntime as ort

    path = MODELS / name
    if not path.is_file():
        raise FaceModelMissing(f"the face model {path} is missing from the installed package; reinstall lipsync-stream")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one frame's small model: threads cost more than they give; sessions run side by side
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@cache
def anchors(spec: DetectorSpec) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the order of the model's outputs (fixed unit size)."""
    out = []
    for stride, per_cell in zip(spec.strides, spec.anchors_per_cell, strict=True):
        cells = spec.size // stride
        ys, xs = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class Detection:
    """A face in image pixels: its box (x1, y1, x2, y2), six keypoints (eyes first), its score."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float


def letterbox(image_rgb: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """The image scaled into a size x size square, centred, zeros around (as MediaPipe's detector
    input); returns it and (scale, x offset, y offset) from square pixels back to the image."""
    h, w = image_rgb.shape[:2]
    side = max(h, w)
    scale = side / size
    x0, y0 = (w - side) / 2, (h - side) / 2
    m = np.array([[1 / scale, 0, -x0 / scale], [0, 1 / scale, -y0 / scale]], np.float64)
    square = cv2.warpAffine(image_rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return square, scale, x0, y0


def detect_faces(image_rgb: np.ndarray, spec: DetectorSpec, min_score: float) -> list[Detection]:
    """Faces in an RGB image, most confident first."""
    square, scale, x0, y0 = letterbox(image_rgb, spec.size)
    tensor = (square.astype(np.float32) * (2 / 255) - 1)[None]
    sess = session(spec.file)
    regressors, scores = sess.run(None, {sess.get_inputs()[0].name: tensor})
    raw = regressors[0] / spec.size
    score = 1 / (1 + np.exp(-np.clip(scores[0, :, 0].astype(np.float64), -100, 100)))
    keep = np.flatnonzero(score >= min_score)
    if len(keep) == 0:
        return []
    anc = anchors(spec)[keep]
    raw, score = raw[keep], score[keep]
    centre = raw[:, 0:2] + anc
    half = raw[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    points = raw[:, 4:16].reshape(-1, 6, 2) + anc[:, None, :]
    to_image = np.float32(scale * spec.size)  # square's [0, 1] -> image pixels
    offset = np.array([x0, y0], np.float32)
    out = []
    order = list(np.argsort(-score, kind="stable"))
    while order:
        top = order[0]
        overlap = iou(boxes[top], boxes[order])
        group = [i for i, o in zip(order, overlap, strict=True) if o > NMS_OVERLAP]
        order = [i for i, o in zip(order, overlap, strict=True) if o <= NMS_OVERLAP]
        weights = score[group][:, None]
        box = (boxes[group] * weights).sum(0) / weights.sum()
        kp = (points[group] * weights[:, :, None]).sum(0) / weights.sum()
        out.append(Detection((box.reshape(2, 2) * to_image + offset).reshape(4), kp * to_image + offset, float(score[top])))
    return out


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x1, y1, x2, y2) box with each of *boxes*."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
    return np.where(area > 0, inter / np.maximum(area, 1e-12), 0.0)


@dataclass(frozen=True)
class Region:
    """A square region of the image, turned by *angle* radians: where the mesh model looks."""

    cx: float
    cy: float
    side: float
    angle: float

    @classmethod
    def around(cls, x1: float, y1: float, x2: float, y2: float, left: np.ndarray, right: np.ndarray) -> Region:
        """The box's centre, square on its long side grown by 1.5, turned by the line left -> right."""
        angle = -math.atan2(-(right[1] - left[1]), right[0] - left[0])
        angle = (angle + math.pi) % (2 * math.pi) - math.pi
        return cls((x1 + x2) / 2, (y1 + y2) / 2, ROI_SCALE * max(x2 - x1, y2 - y1), angle)

    def crop(self, image_rgb: np.ndarray, size: int) -> np.ndarray:
        """The region warped to size x size, corners to corners, edges replicated (MediaPipe
        fits a perspective map to the four corners; a turned square's is this affine one)."""
        corners = cv2.boxPoints(((self.cx, self.cy), (self.side, self.side), math.degrees(self.angle)))
        target = np.array([[0, size], [0, 0], [size, 0]], np.float32)
        m = cv2.getAffineTransform(corners[:3].astype(np.float32), target)
        return cv2.warpAffine(image_rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def project(self, points: np.ndarray, size: int) -> np.ndarray:
        """Points in the crop's pixels back to the image's."""
        rel = points / size - 0.5
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = c * rel[:, 0] - s * rel[:, 1]
        y = s * rel[:, 0] + c * rel[:, 1]
        return np.stack([x * self.side + self.cx, y * self.side + self.cy], axis=1).astype(np.float32)


def region_from_detection(det: Detection) -> Region:
    x1, y1, x2, y2 = det.box
    return Region.around(x1, y1, x2, y2, det.keypoints[0], det.keypoints[1])


def region_from_landmarks(points: np.ndarray) -> Region:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return Region.around(lo[0], lo[1], hi[0], hi[1], points[ROTATION_POINTS[0]], points[ROTATION_POINTS[1]])


def mesh_in(image_rgb: np.ndarray, region: Region) -> tuple[np.ndarray, float]:
    """(478, 2) points in image pixels for the face in *region*, and the face-presence score."""
    crop = region.crop(image_rgb, MESH_SIZE).astype(np.float32) * (1 / 255)
    mesh, *refined, flag = session(MESH_FILE).run(MESH_OUTPUTS, {"input_1": crop[None]})
    points = np.empty((N_POINTS, 2), np.float32)
    points[:N_MESH] = mesh.reshape(N_MESH, 3)[:, :2]
    for index, values in zip((LIPS, LEFT_EYE, RIGHT_EYE, LEFT_IRIS, RIGHT_IRIS), refined, strict=True):
        points[index] = values.reshape(-1, 2)
    presence = 1 / (1 + math.exp(-float(flag.reshape(()))))
    return region.project(points, MESH_SIZE), presence


class FaceMeshTracker:
    """MediaPipe's face mesh for one face: detect, then follow the face from frame to frame.

    In video mode the next frame's region comes from this frame's landmarks, as MediaPipe's
    graph does; ``video=False`` detects on every image. Not shared between threads (it holds
    the tracked region); the sessions underneath are.
    """

    def __init__(self, video: bool = True, min_detection: float = 0.5, min_presence: float = PRESENCE_MIN) -> None:
        self.video = video
        self.min_detection = min_detection
        self.min_presence = min_presence
        self._region: Region | None = None

    def landmarks_rgb(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """(478, 2) float32 pixel coordinates of the face in an RGB image, or None."""
        if self._region is not None and self.video:
            points, presence = mesh_in(image_rgb, self._region)
            if presence >= self.min_presence:
                self._region = region_from_landmarks(points)
                return points
            self._region = None
        faces = detect_faces(image_rgb, SHORT_RANGE, self.min_detection)
        if not faces:
            return None
        points, presence = mesh_in(image_rgb, region_from_detection(faces[0]))
        if presence < self.min_presence:
            return None
        self._region = region_from_landmarks(points)
        return points
