"""Landmark-driven rendering: move lips, jaw and chin, warp the lower face, draw the mouth inside.

The reference frame's face-mesh landmarks (lips, jaw, chin; nose, eyes and cheeks held still)
are displaced to the target mouth shape, measured in units of the mouth's width so that one
shape looks the same on every face. A thin-plate spline through these control points, pinned
to a ring at the edge of the region, gives a smooth backward map that ``cv2.remap`` applies:
nothing outside the region moves, and nothing inside folds or shows a seam. Between the inner
lips the shared painter (:mod:`.interior`) draws the inside of the mouth.
"""

from __future__ import annotations

import collections
import math
import threading

import cv2
import numpy as np
from numba import njit

from ..characters.landmarks import (
    CHIN,
    CHIN_SKIN,
    JAW,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    LOWER_LIP_INNER_MID,
    LOWER_LIP_OUTER_MID,
    LOWER_LIP_SKIN,
    MOUTH_CORNERS,
    NOSE_BOTTOM,
    STILL_POINTS,
    UPPER_LIP_INNER_MID,
    UPPER_LIP_OUTER_MID,
    UPPER_LIP_SKIN,
    MouthFrame,
)
from . import interior, mouthbank
from .base import MouthShape, ReferenceFrame, Region
from .interior import Palette
from .mouthbank import InteriorBank
from .mouthwarp import compose_mouth
from .spline import GRID_STEP, backward_maps

# Displacements at full strength, in mouth widths.
LOWER_LIP_DROP = 0.40  # inner lower lip at open = 1
UPPER_LIP_LIFT = 0.07
JAW_SHARE = 0.8  # of the lower lip's drop that the chin follows
SPREAD = 0.16  # horizontal scale of the lips at width = +-1
ROUND_PULL = 0.32  # corners drawn in at round = 1
ROUND_LIFT = 0.08  # the upper lip's inner edge rises into an arch at round = 1 (an oval opening)
ARCH_FULL_AT = 0.45  # the opening from which a rounded mouth's arch is whole, an "o" target's (less open: in proportion)
# Rounded lips are not drawn thicker (pouting): on our frames the face mesh read a thickened lower
# lip as an open mouth, so an "oo" measured as open as an "a" (see MouthRig).
ROUND_FLATTEN = 0.7  # share of a smile's curve the lips lose at round = 1
UPPER_SHARE = 0.15  # of an open reference mouth's gap that the upper lip closes (the jaw does the rest)
TUCK_LIFT = 0.06  # upper lip lift for f/v, showing the teeth over the lower lip

BANK_MIN_OPENING = 0.04  # mouth widths: narrower openings are drawn (a sliver shows no teeth to copy)

_LIP_IDS = sorted(set(LIPS_UPPER_OUTER + LIPS_LOWER_OUTER + LIPS_UPPER_INNER + LIPS_LOWER_INNER))


def _lens(u: np.ndarray, power: float = 0.75) -> np.ndarray:
    """1 at the middle of the mouth, 0 at the corners (u = +-0.5)."""
    return np.clip(1.0 - (u / 0.5) ** 2, 0.0, 1.0) ** power


def _moving_groups() -> tuple[np.ndarray, np.ndarray]:
    """Every moving landmark once, with its group (the first that claims it, in this order)."""
    groups = [LIPS_UPPER_INNER, LIPS_LOWER_INNER, LIPS_UPPER_OUTER, LIPS_LOWER_OUTER, UPPER_LIP_SKIN, LOWER_LIP_SKIN, JAW + [CHIN] + CHIN_SKIN]
    ids: list[int] = []
    codes: list[int] = []
    for code, group in enumerate(groups):
        for i in group:
            if i not in ids:
                ids.append(i)
                codes.append(code)
    return np.array(ids), np.array(codes)


_MOVING, _GROUP = _moving_groups()
# The spline's own control points: every other point of each contour (lips are smooth curves;
# the mouth interior is drawn from all of them), which halves the spline's cost.
SPLINE_IDS = sorted(
    set(LIPS_UPPER_INNER[::2] + LIPS_LOWER_INNER[::2] + LIPS_UPPER_OUTER[::2] + LIPS_LOWER_OUTER[::2] + [UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID, UPPER_LIP_OUTER_MID, LOWER_LIP_OUTER_MID])
    | set(UPPER_LIP_SKIN) | set(LOWER_LIP_SKIN[::2]) | set(JAW[::2] + [CHIN]) | set(CHIN_SKIN)
)
_CORNER = np.isin(_MOVING, MOUTH_CORNERS)
_POS = {int(i): k for k, i in enumerate(_MOVING)}
_PAIRS = np.array([(_POS[u], _POS[lo]) for u, lo in zip(LIPS_UPPER_INNER, LIPS_LOWER_INNER, strict=True) if u != lo])
_UPPER_INNER = np.array([_POS[i] for i in LIPS_UPPER_INNER])
_CORNERS = [_POS[i] for i in MOUTH_CORNERS]
_LOWER_INNER = np.array([_POS[i] for i in LIPS_LOWER_INNER])
_SPLINE = np.array([_POS[i] for i in SPLINE_IDS])
_UP_MID, _LOW_MID = _POS[UPPER_LIP_INNER_MID], _POS[LOWER_LIP_INNER_MID]


class MouthRig:
    """Everything about a reference frame's mouth that no shape changes, worked out once.

    A target landmark's move is linear in the shape's travels: across the lips, ``du`` is
    ``(SPREAD * width - ROUND_PULL * round)`` times a per-point factor; down, ``dv`` is a
    per-point base (closing the reference's own gap, so that every shape starts from closed
    lips: the jaw and lower lip do most of the closing, as they do in speech) plus per-point
    factors of the lower lip's drop, the upper lip's lift, rounding, the f/v tuck and the rounded
    lips' arch. The rig keeps those factors, the region and the spline's fixed points, and the
    interior's palette.
    """

    def __init__(self, lm: np.ndarray, image: np.ndarray) -> None:
        self.frame = frame = MouthFrame(lm)
        uv = frame.to_uv(lm[_MOVING].astype(np.float64))
        self.uv = uv
        u, v = uv[:, 0], uv[:, 1]
        gaps = np.maximum(v[_PAIRS[:, 1]] - v[_PAIRS[:, 0]], 0.0)
        closing = np.zeros(len(_MOVING))
        closing[_PAIRS[:, 0]] = UPPER_SHARE * gaps
        closing[_PAIRS[:, 1]] = -(1.0 - UPPER_SHARE) * gaps
        mid_gap = max(0.0, float(v[_LOW_MID] - v[_UP_MID]))
        self.gap = mid_gap
        lens, soft_lens = _lens(u), _lens(u, 0.5)
        lower_skin = np.clip(1.0 - np.abs(u), 0.3, 1.0)
        jaw = np.clip(1.0 - np.abs(u) / 1.4, 0.2, 1.0)  # jaw and chin follow the lower lip, less towards the ears
        groups = [_GROUP == g for g in range(7)]
        up_close, low_close = UPPER_SHARE * mid_gap, -(1.0 - UPPER_SHARE) * mid_gap
        base = np.select(groups[:6], [closing, closing, up_close * lens, low_close * lens, 0.4 * up_close * soft_lens, low_close * lower_skin], low_close * jaw)
        # columns: lower-lip drop, upper-lip lift, rounding, tuck, the rounded lips' arch (all in mouth widths)
        factors = np.zeros((len(_MOVING), 5))
        factors[:, 0] = np.select(groups[:6], [0 * lens, lens, 0 * lens, 0.95 * lens, 0 * lens, 0.9 * lower_skin], JAW_SHARE * jaw)
        factors[:, 1] = np.select([groups[0], groups[2], groups[4]], [-lens, -0.85 * lens, -0.4 * 0.85 * soft_lens], 0.0)
        # Rounding (o, u) makes the opening an oval: the lips lose a smile's curve (their sides and
        # corners, above the closed lips' middle, come down towards it, else drawing the
        # corners in would steepen the curve into a V) and the upper lip arches up in the middle,
        # as far as the mouth is open (ARCH_FULL_AT): the face mesh on our frames then measures
        # the opening the engine asked for, rounded or not (r 0.98 between the two on real
        # speakers' clips, against 0.91 with a whole arch on pursed lips and thicker lips).
        closed_v = v + closing
        unsmile = np.maximum(float(closed_v[_UP_MID]) - closed_v, 0.0) * ROUND_FLATTEN
        arch = ROUND_LIFT * _lens(u, 0.5)
        lips = groups[0] | groups[1] | groups[2] | groups[3]
        factors[:, 2] = np.where(lips, unsmile, 0.0)
        factors[:, 4] = np.select([groups[0], groups[2], groups[4]], [-arch, -arch, -0.4 * arch], 0.0)
        factors[:, 3] = np.select([groups[1], groups[3]], [-0.02 * lens, -0.02 * lens], 0.0)
        base[_CORNER] = 0.0
        factors[_CORNER, :2] = 0.0
        factors[_CORNER, 3] = 0.0
        self.base_v, self.factors_v = base, factors
        along = u * np.minimum(1.0, 0.6 / np.maximum(np.abs(u), 1e-9))
        self.factor_u = along * np.select([groups[4], groups[5], groups[6]], [0.3, 0.5, 0.0], 1.0)
        self.roi = roi_for(lm, frame, image.shape[:2])
        y0, y1, x0, x1 = self.roi
        self.still = lm[STILL_POINTS].astype(np.float64)
        self.spline_src = np.vstack([lm[SPLINE_IDS].astype(np.float64), self.still])
        self.ring = _ring(y0, y1, x0, x1)
        self.palette = Palette.from_skin(_skin_colour(image, lm, frame))

    def targets(self, shape: MouthShape) -> np.ndarray:
        """(moving landmarks, 2) pixel positions for *shape*, in the order of ``_MOVING``."""
        opening = min(max(shape.open, 0.0), 1.2)
        width = min(max(shape.width, -1.0), 1.0)
        rnd, tuck = min(max(shape.round, 0.0), 1.0), min(max(shape.tuck, 0.0), 1.0)
        # The arch opens the lips: it grows with the opening, so that pursed lips (an "oo" or a
        # "w" that is barely open) stay nearly shut instead of showing a dark oval.
        arch = rnd * min(opening / ARCH_FULL_AT, 1.0)
        travels = np.array([LOWER_LIP_DROP * opening, UPPER_LIP_LIFT * opening + TUCK_LIFT * tuck, rnd, tuck, arch])
        uv = self.uv.copy()
        uv[:, 0] += (SPREAD * width - ROUND_PULL * rnd) * self.factor_u
        uv[:, 1] += self.base_v + self.factors_v @ travels
        return self.frame.to_xy(uv)


_RIGS: collections.OrderedDict[bytes, MouthRig] = collections.OrderedDict()
_RIGS_LOCK = threading.Lock()
MAX_RIGS = 1024  # reference frames whose rigs are kept (a few kB each)


def rig_for(lm: np.ndarray, image: np.ndarray) -> MouthRig:
    """The rig of a reference frame, from a cache keyed by its landmarks and the skin its
    interior is lit from: worked out once per reference frame, whichever session asks."""
    key = str(lm.dtype).encode() + lm.tobytes() + _skin_patch(image, lm, MouthFrame(lm)).tobytes()
    with _RIGS_LOCK:
        rig = _RIGS.get(key)
        if rig is not None:
            _RIGS.move_to_end(key)
            return rig
    rig = MouthRig(lm, image)
    with _RIGS_LOCK:
        _RIGS[key] = rig
        while len(_RIGS) > MAX_RIGS:
            _RIGS.popitem(last=False)
    return rig


def reference_rig(ref: ReferenceFrame) -> MouthRig:
    """The rig of *ref* (which has landmarks), kept in its character's memo by frame index (no
    key to build from the landmarks each frame); :func:`rig_for` without a memo."""
    assert ref.landmarks is not None
    if ref.memo is None:
        return rig_for(ref.landmarks, ref.image)
    with _RIGS_LOCK:
        rigs = ref.memo.setdefault("meshwarp.rigs", collections.OrderedDict())
        rig = rigs.get(ref.index)
        if rig is not None:
            rigs.move_to_end(ref.index)
            return rig
    rig = rig_for(ref.landmarks, ref.image)
    with _RIGS_LOCK:
        rigs[ref.index] = rig
        while len(rigs) > MAX_RIGS:
            rigs.popitem(last=False)
    return rig


def roi_for(lm: np.ndarray, frame: MouthFrame, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the lower face with room for the jaw to drop."""
    h, w = size
    pts = lm[JAW + [CHIN, 2, 98, 327]]
    x0 = float(pts[:, 0].min()) - 0.35 * frame.width
    x1 = float(pts[:, 0].max()) + 0.35 * frame.width
    y0 = float(lm[NOSE_BOTTOM, 1]) - 0.45 * frame.width  # above the nostrils: the fade happens on the nose bridge
    y1 = float(lm[CHIN, 1]) + (JAW_SHARE * LOWER_LIP_DROP + 0.8) * frame.width  # room below the dropped chin
    return max(0, int(y0)), min(h, int(math.ceil(y1))), max(0, int(x0)), min(w, int(math.ceil(x1)))


def _ring(y0: int, y1: int, x0: int, x1: int, per_side: int = 7) -> np.ndarray:
    xs = np.linspace(x0, x1 - 1, per_side)
    ys = np.linspace(y0, y1 - 1, per_side)
    pts = [(x, y0) for x in xs] + [(x, y1 - 1) for x in xs] + [(x0, y) for y in ys[1:-1]] + [(x1 - 1, y) for y in ys[1:-1]]
    return np.array(pts, dtype=np.float64)


def compose_region(ref: ReferenceFrame, shape: MouthShape, align: int = 16) -> Region | None:
    """The rows of the frame that *shape* changes, as (first row, band of full-width rows).

    The band starts and ends on multiples of *align* (JPEG MCU rows). None: nothing changes.
    A reference without landmarks is drawn by the simpler warp of :mod:`.mouthwarp`.
    """
    lm = ref.landmarks
    if lm is None:
        return compose_mouth(ref, shape, align)
    image = ref.image
    rig = reference_rig(ref)
    if shape.is_rest and rig.gap < 0.03:
        return None  # lips already closed: silence leaves the frame untouched
    y0, y1, x0, x1 = rig.roi
    if y1 - y0 < 16 or x1 - x0 < 16:
        return None
    frame = rig.frame
    targets = rig.targets(shape)
    opening_px = float((targets[_LOW_MID] - targets[_UP_MID]) @ frame.ey)
    # Inner lips that meet stay a pixel apart, so the spline squeezes any open mouth in the
    # reference into that pixel instead of being asked to map one point to two places.
    up, low = _PAIRS[:, 0], _PAIRS[:, 1]
    sep = (targets[low] - targets[up]) @ frame.ey
    targets[low] += np.maximum(1.0 - sep, 0.0)[:, None] * frame.ey
    dst = np.vstack([targets[_SPLINE], rig.still])
    inside = (dst[:, 0] > x0) & (dst[:, 0] < x1 - 1) & (dst[:, 1] > y0) & (dst[:, 1] < y1 - 1)
    dst = np.vstack([dst[inside], rig.ring])
    src = np.vstack([rig.spline_src[inside], rig.ring])

    # Backward map: for each output pixel, where to sample the reference. Fit in a local frame,
    # evaluate on a coarse grid, and scale the displacement up (bilinear) to every pixel.
    h, w = y1 - y0, x1 - x0
    maps = backward_maps(dst, src, (x0, y0), frame.width, h, w)
    top = (y0 // align) * align
    bottom = min(image.shape[0], -(-y1 // align) * align)
    band = image[top:bottom].copy()
    warped = band[y0 - top : y1 - top, x0:x1]
    cv2.remap(image, maps, None, cv2.INTER_LINEAR, dst=warped, borderMode=cv2.BORDER_REFLECT)  # type: ignore[call-overload]  # map2 may be None
    if opening_px >= 0.6:
        _draw_interior(warped, rig, targets, shape, (y0, x0), opening_px, ref.interiors)
    return top, band


def _poly(points: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    arr = points - np.array([origin[1], origin[0]])
    return np.round(arr * 4).astype(np.int32)  # 2 fractional bits for cv2's sub-pixel drawing


def _draw_interior(
    warped: np.ndarray, rig: MouthRig, targets: np.ndarray, shape: MouthShape, origin: tuple[int, int], opening_px: float, interiors: InteriorBank | None
) -> None:
    """The mouth interior between the target inner lips, drawn into *warped* (the uint8 region
    of the output, origin at *origin*) in place: the character's own nearest interior when it
    has a bank (:mod:`.mouthbank`), else by the shared painter (:mod:`.interior`)."""
    upper, lower = targets[_UPPER_INNER], targets[_LOWER_INNER]
    poly = np.vstack([upper, lower[::-1]])
    # Work in the polygon's bounding box only (inside the region).
    rh, rw = warped.shape[:2]
    by0 = max(0, int(poly[:, 1].min()) - origin[0] - 2)
    by1 = min(rh, int(math.ceil(poly[:, 1].max())) - origin[0] + 3)
    bx0 = max(0, int(poly[:, 0].min()) - origin[1] - 2)
    bx1 = min(rw, int(math.ceil(poly[:, 0].max())) - origin[1] + 3)
    if by1 - by0 < 2 or bx1 - bx0 < 2:
        return
    origin = (origin[0] + by0, origin[1] + bx0)
    h, w = by1 - by0, bx1 - bx0
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [_poly(poly, origin)], (255,), lineType=cv2.LINE_AA, shift=2)
    # Mouth coordinates of every pixel of the box: an affine function of (x, y).
    frame = rig.frame
    ox, oy = (np.array([origin[1], origin[0]], np.float64) - frame.origin) / frame.width
    ex, ey = frame.ex / frame.width, frame.ey / frame.width
    affine = np.array([[ox * frame.ex[0] + oy * frame.ex[1], ex[0], ex[1]], [ox * frame.ey[0] + oy * frame.ey[1], ey[0], ey[1]]], np.float32)
    up_uv, low_uv = frame.to_uv(upper), frame.to_uv(lower)
    up_uv, low_uv = up_uv[np.argsort(up_uv[:, 0])], low_uv[np.argsort(low_uv[:, 0])]
    alpha, u, v, v_up, v_low = _mouth_coordinates(mask, affine, up_uv, low_uv)
    opening = opening_px / frame.width
    if interiors is not None and opening >= BANK_MIN_OPENING:
        # the character's own interior, for this opening and this width against the reference's
        width = float(np.hypot(*(targets[_CORNERS[1]] - targets[_CORNERS[0]]))) / frame.width
        span = 0.5 * float(up_uv[:, 0].max() - up_uv[:, 0].min())
        mouthbank.paint(warped[by0:by1, bx0:bx1], alpha, u, v, v_up, v_low, span, interiors.nearest(opening, width))
    else:
        interior.paint(warped[by0:by1, bx0:bx1], alpha, u, v, v_up, v_low, shape, opening, rig.palette)


@njit(nogil=True, cache=True)
def _mouth_coordinates(mask, affine, up_uv, low_uv):  # type: ignore[no-untyped-def]
    """For each pixel of a box: (alpha from the 0-255 *mask*, u, v from the *affine* map of its
    (x, y), the upper and lower inner lips' v at its u, interpolated along the lips' (u, v)
    points sorted by u), all (h, w) float32, in one call that does not hold the GIL."""
    h, w = mask.shape
    alpha, u, v = np.empty((h, w), np.float32), np.empty((h, w), np.float32), np.empty((h, w), np.float32)
    for y in range(h):
        for x in range(w):
            alpha[y, x] = mask[y, x] * np.float32(1.0 / 255.0)
            u[y, x] = affine[0, 0] + affine[0, 1] * x + affine[0, 2] * y
            v[y, x] = affine[1, 0] + affine[1, 1] * x + affine[1, 2] * y
    return alpha, u, v, _along(u, up_uv), _along(u, low_uv)


@njit(nogil=True, cache=True)
def _along(u, curve):  # type: ignore[no-untyped-def]
    """The *curve*'s v (linear between its (u, v) points, sorted by u; held past its ends) at
    every *u*: ``np.interp``, whose numba version takes seconds to compile."""
    out = np.empty(u.shape, np.float32)
    last = len(curve) - 1
    for y in range(u.shape[0]):
        for x in range(u.shape[1]):
            q = u[y, x]
            if q <= curve[0, 0]:
                out[y, x] = curve[0, 1]
            elif q >= curve[last, 0]:
                out[y, x] = curve[last, 1]
            else:
                i = 1
                while curve[i, 0] < q:
                    i += 1
                span = curve[i, 0] - curve[i - 1, 0]
                t = (q - curve[i - 1, 0]) / span if span > 0.0 else 0.0
                out[y, x] = curve[i - 1, 1] + t * (curve[i, 1] - curve[i - 1, 1])
    return out


def _skin_patch(image: np.ndarray, lm: np.ndarray, frame: MouthFrame) -> np.ndarray:
    """The skin between the nose and the upper lip (every other pixel): the face's own lighting."""
    skin_pt = 0.5 * (lm[NOSE_BOTTOM] + lm[UPPER_LIP_OUTER_MID])
    sx, sy = int(skin_pt[0]), int(skin_pt[1])
    r = max(2, int(0.06 * frame.width))
    return image[max(0, sy - r) : sy + r : 2, max(0, sx - r) : sx + r : 2].reshape(-1, 3)


def _skin_colour(image: np.ndarray, lm: np.ndarray, frame: MouthFrame) -> np.ndarray | None:
    """Mean colour of that skin."""
    skin = _skin_patch(image, lm, frame)
    return skin.mean(axis=0, dtype=np.float32) if len(skin) else None


def warm_up() -> None:
    """Compile the warp's kernels now (then from numba's cache), so that no session's first
    moving mouth waits for them."""
    pts = np.array([[20.0, 20.0], [40.0, 22.0], [30.0, 40.0], [25.0, 30.0]])
    backward_maps(pts, pts + 1.0, (0, 0), 20.0, 2 * GRID_STEP, 2 * GRID_STEP)
    lips = np.array([[-0.5, 0.0], [0.5, 0.0]])
    _mouth_coordinates(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.float32), lips, lips)

