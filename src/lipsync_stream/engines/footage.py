"""A mouth from the character's own footage: the person's real lips, teeth, jaw and chin.

A character made from a talking video has, somewhere in its frames, a mouth close to almost any
shape speech asks for. The :class:`MouthIndex` (worked out once per character from its
landmarks, in tens of milliseconds; about 0.6 MB for 900 frames) knows every frame's mouth
state in the mouth's own frame (inner-lip opening in mouth widths, width against the video's
median: free of head position, size and tilt) and where its head is (the still points: nose,
eyes, cheekbones).

Per output frame, :meth:`MouthIndex.choose` picks the source frame by unit selection, as
concatenative speech synthesis picks its units: the distance of its mouth state from the
target, plus how far its head is from the output frame's (a lower face pasted across a turn of
the head would not fit), plus a price for leaving the previous choice's run (the next frame of
the footage, or the same one, is free), so the choice does not flicker. :func:`compose` aligns
the chosen frame's lower face to the output frame's head (a similarity transform through the
still points), and blends it in under a feathered mask from under the nose to below the chin,
with the skin tone matched at the mask's edge, so the jaw and chin outline are the footage's
own. A closed mouth is always real closed-mouth pixels. Where no frame is close enough, the
nearest one is warped the rest of the way (:func:`.meshwarp.compose_region`) before it is
pasted: a small warp of a near mouth, never an open mouth squeezed shut.

A video whose mouth never opens, or never closes, has no index: the warp draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from numba import njit

from ..characters.landmarks import CHIN, JAW, LOWER_LIP_INNER_MID, MOUTH_CORNERS, NOSE_BOTTOM, NOSE_WINGS, STILL_POINTS, UPPER_LIP_INNER_MID, MouthFrame

MIN_FRAMES = 30  # a second of footage at least
CLOSED_OPENING = 0.03  # mouth widths between the inner lips: closed
MIN_CLOSED_FRAMES = 3
#: the speech -> mouth model's opening at its 95th percentile on real speech (0.48 mean over the
#: corpus's 34 training clips, 0.36-0.61 per clip): that is where the footage's widest mouths go
OPEN_AT_WIDEST = 0.48
MIN_WIDEST = 0.12  # the footage's widest openings (95th percentile) must reach this, in mouth widths
WIDTH_SCALE = 0.10  # relative mouth width at Shape.width = +-1 (before the footage's own range)
OPENING_WEIGHT, WIDTH_WEIGHT = 1.0 / 0.03**2, 1.0 / 0.05**2  # a cost of 1 per 0.03 widths of opening, 0.05 of width
POSE_WEIGHT = 1.0 / 0.03**2  # per 3 % of the face's size that the still points sit apart after alignment
SWITCH_COST = 1.5  # leaving the previous choice's run (rendered, training clips: r 0.30 at 1.5, 0.28 at 6)
TIME_WEIGHT = 1.0 / 300  # per frame between the source and the output frame (10 s: a cost of 1)
CLOSE_ENOUGH = 4.0  # a chosen frame whose mouth is further off (Choice.mismatch) is warped the rest of the way
FEATHER = 0.25  # the mask's soft edge, in mouth widths
MASK_SCALE = 4  # the mask is drawn this many times smaller


class Shape(Protocol):
    """The mouth shape asked for (``engines.base.MouthShape`` is one): how open, how wide, how
    round. (This module takes what it needs, and nothing from the engines' base, which refers to
    it: one way.)"""

    @property
    def open(self) -> float: ...
    @property
    def width(self) -> float: ...
    @property
    def round(self) -> float: ...


@dataclass(frozen=True)
class Choice:
    """The source frame chosen for one output frame."""

    frame: int
    cost: float  # all of it: mouth state, head pose, time
    mismatch: float = 0.0  # the mouth state's part: how far its mouth is from the one asked for


class MouthIndex:
    """Every frame's mouth state and head pose, and the choice of a source frame for a target."""

    def __init__(self, landmarks: np.ndarray) -> None:
        lm = landmarks.astype(np.float64)
        frames = [MouthFrame(p) for p in lm]
        self.openings = np.array([f.to_uv(p[[UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID]])[:, 1] @ (-1.0, 1.0) for p, f in zip(lm, frames, strict=True)])
        widths = np.array([f.width for f in frames])
        self.widths = widths / max(float(np.median(widths)), 1e-6)
        # Head pose: the still points in the face's own scale, centred.
        still = lm[:, STILL_POINTS]
        centred = still - still.mean(axis=1, keepdims=True)
        self.pose = centred / np.sqrt(np.maximum((centred**2).sum(axis=(1, 2)) / len(STILL_POINTS), 1e-12))[:, None, None]  # (a degenerate file: no division by 0)
        # flattened, and turned a quarter (x, y -> y, -x), for pose_cost's two dot products
        self._flat = self.pose.reshape(len(lm), -1)
        self._turned = (self.pose[:, :, ::-1] * (1.0, -1.0)).reshape(len(lm), -1)
        self.widest = float(np.percentile(self.openings, 95))
        spread = float(np.percentile(self.widths, 90) - np.median(self.widths))
        self.width_scale = max(spread, 0.5 * WIDTH_SCALE)
        self.closed = int((self.openings < CLOSED_OPENING).sum())

    def __len__(self) -> int:
        return len(self.openings)

    @property
    def nbytes(self) -> int:
        """Its arrays (``_flat`` is a view of ``pose``): about 0.6 MB for 900 frames."""
        return int(self.openings.nbytes + self.widths.nbytes + self.pose.nbytes + self._turned.nbytes)

    @classmethod
    def build(cls, landmarks: np.ndarray) -> tuple[MouthIndex | None, str]:
        """The index of a character's frames and what it found, or None and why not, when its
        footage has too little mouth variety to borrow from (a still, a silent face, a mouth
        always open)."""
        if len(landmarks) < MIN_FRAMES:
            return None, f"only {len(landmarks)} frames ({MIN_FRAMES} needed)"
        index = cls(landmarks)
        if index.widest < MIN_WIDEST:
            return None, f"the mouth hardly opens (widest {index.widest:.2f} mouth widths, {MIN_WIDEST} needed)"
        if index.closed < MIN_CLOSED_FRAMES:
            return None, f"the lips close in {index.closed} frames ({MIN_CLOSED_FRAMES} needed)"
        return index, f"{len(index)} frames, {index.closed} with closed lips, widest opening {index.widest:.2f} mouth widths"

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> MouthIndex | None:
        """The index, or None (see :meth:`build`)."""
        return cls.build(landmarks)[0]

    def target(self, shape: Shape) -> tuple[float, float]:
        """(opening in mouth widths, relative width) that *shape* asks of this face."""
        opening = max(shape.open, 0.0) * self.widest / OPEN_AT_WIDEST if shape.open > 0.02 else 0.0
        width = 1.0 + self.width_scale * (shape.width - shape.round)
        return opening, width

    def choose(self, shape: Shape, ref_index: int, previous: int | None) -> Choice:
        """The source frame for *shape* on output frame *ref_index*, after *previous*."""
        opening, width = self.target(shape)
        if opening == 0.0 and self.openings[ref_index] < CLOSED_OPENING:
            return Choice(ref_index, 0.0)  # the frame's own closed lips
        weights = np.array([OPENING_WEIGHT, WIDTH_WEIGHT, POSE_WEIGHT, TIME_WEIGHT, SWITCH_COST, CLOSED_OPENING])
        best, cost, mismatch = _select(self.openings, self.widths, self._flat, self._turned, ref_index, -1 if previous is None else previous, opening, width, weights)
        return Choice(best, cost, mismatch) if best >= 0 else Choice(ref_index, 0.0)


@njit(nogil=True, cache=True)
def _select(openings, widths, flat, turned, ref, previous, opening, width, weights):  # type: ignore[no-untyped-def]
    """Unit selection in one pass over the frames, without the GIL: per frame the mouth's
    distance from the target (a closed target: closed frames only), the head pose's (the
    residual of the best rotation onto frame *ref*'s still points: orthogonal Procrustes in
    closed form for 2-D), the time between them, and the price for leaving the run that
    *previous* (-1: none) was in. Returns (frame, its cost, the mouth's part of it); frame -1
    when no frame may be chosen."""
    opening_w, width_w, pose_w, time_w, switch_cost, closed_below = weights[0], weights[1], weights[2], weights[3], weights[4], weights[5]
    a = flat[ref]
    points = flat.shape[1] // 2
    closed_only = opening == 0.0
    best, best_total, best_cost, best_mismatch = -1, np.inf, 0.0, 0.0
    for j in range(len(openings)):
        if closed_only and openings[j] >= closed_below:
            continue
        mismatch = opening_w * (openings[j] - opening) ** 2 + width_w * (widths[j] - width) ** 2
        dot, cross = 0.0, 0.0
        for q in range(flat.shape[1]):
            dot += flat[j, q] * a[q]
            cross += turned[j, q] * a[q]
        pose = max(2.0 - 2.0 * np.sqrt(dot * dot + cross * cross) / points, 0.0) * pose_w
        cost = mismatch + pose + time_w * abs(j - ref)
        total = cost if previous >= 0 and (j == previous or j == previous + 1) else cost + switch_cost
        if total < best_total:
            best, best_total, best_cost, best_mismatch = j, total, cost, mismatch
    return best, best_cost, best_mismatch


class Footage:
    """A character's frames as a source of mouths: the frames (shared, read-only), their
    landmarks and the index. One per character, shared by its sessions."""

    def __init__(self, frames: np.ndarray, landmarks: np.ndarray, index: MouthIndex) -> None:
        self.frames, self.landmarks, self.index = frames, landmarks, index
        self._polygons: list[np.ndarray | None] = [None] * len(frames)

    def polygon(self, j: int) -> np.ndarray:
        """Frame *j*'s lower-face polygon (:func:`lower_face_polygon`), worked out once: a
        similarity transform carries it as it carries the landmarks, so it is the same for
        every output frame it is pasted into. (Two threads may both work it out: the same.)"""
        polygon = self._polygons[j]
        if polygon is None:
            polygon = self._polygons[j] = lower_face_polygon(self.landmarks[j])
        return polygon

    @classmethod
    def of(cls, frames: np.ndarray, landmarks: np.ndarray) -> Footage | None:
        index = MouthIndex.from_landmarks(landmarks) if len(frames) == len(landmarks) else None
        return cls(frames, landmarks, index) if index is not None else None

    @property
    def nbytes(self) -> int:
        """What the index adds (the frames are the character's own)."""
        polygons = len(self._polygons) * 2 * (len(JAW) + 6) * 8  # at most, once all are worked out
        return self.index.nbytes + polygons


def alignment(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform that carries *source*'s still points onto *target*'s: least
    squares in closed form (scale and rotation as one complex number)."""
    a = source[STILL_POINTS].astype(np.float64)
    b = target[STILL_POINTS].astype(np.float64)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    za = (a - ma) @ (1.0, 1j)
    zb = (b - mb) @ (1.0, 1j)
    z = np.vdot(za, zb) / max(float(np.vdot(za, za).real), 1e-12)
    rotation = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.hstack([rotation, (mb - rotation @ ma)[:, None]])


def lower_face_polygon(lm: np.ndarray) -> np.ndarray:
    """The region that comes from the source: from just under the nose, out past the mouth
    corners, down round the jaw to below the chin (the feather then falls on the neck)."""
    frame = MouthFrame(lm)
    w = frame.width
    nose = lm[NOSE_BOTTOM].astype(np.float64)
    wings = lm[list(NOSE_WINGS)].astype(np.float64)
    corners = lm[list(MOUTH_CORNERS)].astype(np.float64)
    jaw = lm[JAW].astype(np.float64)
    down = frame.ey
    top_left = wings[0] + 0.15 * w * down - 0.1 * w * frame.ex
    top_right = wings[1] + 0.15 * w * down + 0.1 * w * frame.ex
    side_left = corners[0] - 0.35 * w * frame.ex
    side_right = corners[1] + 0.35 * w * frame.ex
    chin = lm[CHIN].astype(np.float64) + 0.35 * w * down
    below = jaw + 0.25 * w * down
    inner = [p for p in below if np.dot(p - nose, down) > np.dot(side_left - nose, down)]
    points = [top_left, side_left, *[p for p in inner if np.dot(p - chin, frame.ex) < 0], chin, *[p for p in inner if np.dot(p - chin, frame.ex) > 0], side_right, top_right]
    return np.array(points)


def feathered_mask(polygon: np.ndarray, shape: tuple[int, int], feather: int) -> np.ndarray:
    """1 inside *polygon*, 0 outside, with a soft edge *feather* pixels wide (float32, *shape*).

    Drawn and blurred at a quarter of the size, then scaled up: the edge is smooth anyway, and
    a wide blur at full size would cost more than the rest of the frame.
    """
    h, w = shape
    small = np.zeros((-(-h // MASK_SCALE), -(-w // MASK_SCALE)), np.float32)
    cv2.fillPoly(small, [np.round(polygon * (4 / MASK_SCALE)).astype(np.int32)], (1.0,), lineType=cv2.LINE_AA, shift=2)
    blurred = cv2.GaussianBlur(small, (0, 0), feather / 2.0 / MASK_SCALE)
    return np.ascontiguousarray(cv2.resize(blurred, None, fx=MASK_SCALE, fy=MASK_SCALE, interpolation=cv2.INTER_LINEAR)[:h, :w])


def compose(image: np.ndarray, landmarks: np.ndarray, source_image: np.ndarray, source_lm: np.ndarray, source_polygon: np.ndarray | None = None, align: int = 16) -> tuple[int, np.ndarray]:
    """The output frame *image* (face-mesh points *landmarks*) with the lower face of
    *source_image* (*source_lm*, its lower-face polygon *source_polygon* if worked out already)
    blended in: the changed band of rows, ``(top, band)`` (an ``engines.base.Region``)."""
    h, w = image.shape[:2]
    matrix = alignment(source_lm, landmarks)
    polygon = (lower_face_polygon(source_lm) if source_polygon is None else source_polygon) @ matrix[:, :2].T + matrix[:, 2]
    corners = landmarks[list(MOUTH_CORNERS)].astype(np.float64)
    feather = max(2, int(FEATHER * float(np.hypot(*(corners[1] - corners[0])))))
    y0 = max(0, int(polygon[:, 1].min()) - feather)
    y1 = min(h, int(np.ceil(polygon[:, 1].max())) + feather)
    x0 = max(0, int(polygon[:, 0].min()) - feather)
    x1 = min(w, int(np.ceil(polygon[:, 0].max())) + feather)
    top = (y0 // align) * align
    bottom = min(h, -(-y1 // align) * align)
    band = image[top:bottom].copy()
    if y1 - y0 < 8 or x1 - x0 < 8:
        return top, band
    shifted = matrix.copy()
    shifted[:, 2] -= (x0, y0)
    patch = cv2.warpAffine(source_image, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = feathered_mask(polygon - (x0, y0), (y1 - y0, x1 - x0), feather)
    into = band[y0 - top : y1 - top, x0:x1]
    # Skin tone: the source's light may differ from the output frame's; match the means where
    # the two meet (the feather), so the edge does not show.
    edge = cv2.inRange(mask, 0.05, 0.95)  # type: ignore[call-overload]  # (scalar bounds: the stubs know arrays only)
    if cv2.countNonZero(edge) > 16:
        shift = np.subtract(cv2.mean(into, mask=edge), cv2.mean(patch, mask=edge))
        patch = cv2.add(patch, tuple(float(v) for v in shift))  # type: ignore[call-overload]  # (saturating, as above)
    into[:] = cv2.blendLinear(patch, into, mask, 1.0 - mask)
    return top, band
