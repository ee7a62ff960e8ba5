"""Draw an open mouth on a closed-mouth reference frame, by warping it.

Shared by engines that produce a :class:`MouthShape`. In the mouth's own coordinates (units of
the mouth's half-width, ``u`` along the lip line, ``v`` down), the lower lip and jaw move down,
the upper lip lifts a little, the corners spread or round, and the lens-shaped gap between the
lips is filled with a mouth interior (cavity, upper teeth, tongue) lit like the face. Every
displacement fades to zero before the edge of the region it touches, and the region is blended
with a feathered mask, so no box is ever visible. A closed, neutral shape returns the frame
unchanged, pixel for pixel.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .base import MouthShape, ReferenceFrame

# Region around the mouth that may change, in half-widths.
ROI_HALF_WIDTH = 1.9
ROI_TOP = 0.9
ROI_BOTTOM = 2.6

MAX_DROP = 0.55  # lower lip travel at open=1
MAX_LIFT = 0.12  # upper lip travel at open=1
MAX_SPREAD = 0.12  # corner travel at width=±1

# Interior colours (BGR) for a face of mean luminance 170; scaled to the actual face.
CAVITY = np.array([52.0, 48.0, 105.0], dtype=np.float32)
TEETH = np.array([190.0, 205.0, 218.0], dtype=np.float32)
TONGUE = np.array([85.0, 90.0, 175.0], dtype=np.float32)


def smoothstep(e0: float, e1: float, x: np.ndarray | float) -> np.ndarray:
    """0 below e0, 1 above e1, smooth between; keeps float32 arrays float32."""
    t = np.clip((np.asarray(x) - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lens(u: np.ndarray) -> np.ndarray:
    """Vertical opening profile along the lips: 1 at the centre, 0 at the corners."""
    return np.clip(1.0 - (u / 0.92) ** 2, 0.0, 1.0) ** 0.85


def _jaw(u: np.ndarray) -> np.ndarray:
    """How much the chin follows the jaw across the face (wider than the mouth)."""
    return np.clip(1.0 - (u / 1.7) ** 2, 0.0, 1.0) ** 1.5


def _lower_travel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Downward travel (per unit of drop) of a source point at or below the lip line."""
    m = smoothstep(0.15, 0.8, v)
    profile = _lens(u) * (1.0 - m) + _jaw(u) * m
    return profile * (1.0 - smoothstep(1.0, ROI_BOTTOM - 0.15, v))


def _upper_travel(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Upward travel (per unit of lift) of a source point above the lip line."""
    return _lens(u) * (1.0 - smoothstep(0.0, ROI_TOP - 0.15, -v))


def roi_bounds(ref: ReferenceFrame) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1) that a shape may change, clipped to the frame."""
    m = ref.mouth
    c, s = math.cos(m.angle), math.sin(m.angle)
    xs, ys = [], []
    for u, v in ((-ROI_HALF_WIDTH, -ROI_TOP), (ROI_HALF_WIDTH, -ROI_TOP), (-ROI_HALF_WIDTH, ROI_BOTTOM), (ROI_HALF_WIDTH, ROI_BOTTOM)):
        xs.append(m.cx + m.half_width * (u * c - v * s))
        ys.append(m.cy + m.half_width * (u * s + v * c))
    h, w = ref.image.shape[:2]
    y0, y1 = max(0, int(math.floor(min(ys)))), min(h, int(math.ceil(max(ys))) + 1)
    x0, x1 = max(0, int(math.floor(min(xs)))), min(w, int(math.ceil(max(xs))) + 1)
    return y0, y1, x0, x1


def compose_mouth(ref: ReferenceFrame, shape: MouthShape) -> np.ndarray:
    """A copy of the reference frame with the mouth opened/shaped as *shape* says."""
    out = ref.image.copy()
    if shape.open <= 1e-3 and abs(shape.width) <= 1e-3:
        return out
    m = ref.mouth
    hw = float(m.half_width)
    y0, y1, x0, x1 = roi_bounds(ref)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return out
    c, s = math.cos(m.angle), math.sin(m.angle)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs - np.float32(m.cx), ys - np.float32(m.cy)
    u = (dx * c + dy * s) / hw
    v = (-dx * s + dy * c) / hw

    # Corners spread (width > 0) or round (width < 0): horizontal scaling near the lips.
    spread = MAX_SPREAD * float(np.clip(shape.width, -1.0, 1.0))
    bell = (1.0 - smoothstep(1.15, ROI_HALF_WIDTH - 0.1, np.abs(u))) * (1.0 - smoothstep(0.35, 1.2, np.abs(v)))
    u_src = u / (1.0 + spread * bell)

    opening = float(np.clip(shape.open, 0.0, 1.0))
    drop, lift = MAX_DROP * opening, MAX_LIFT * opening
    lens = _lens(u_src)
    v_low = drop * lens  # where the lower lip's inner edge lands
    v_up = -lift * lens  # where the upper lip's inner edge lands

    # Invert the forward travel by fixed-point iteration (the fields are smooth and monotonic).
    v_lower_src = v - drop * _lower_travel(u_src, np.maximum(v, 0.0))
    for _ in range(3):
        v_lower_src = v - drop * _lower_travel(u_src, np.maximum(v_lower_src, 0.0))
    v_upper_src = v + lift * _upper_travel(u_src, np.minimum(v, 0.0))
    for _ in range(2):
        v_upper_src = v + lift * _upper_travel(u_src, np.minimum(v_upper_src, 0.0))
    v_src = np.where(v >= 0.5 * (v_low + v_up), v_lower_src, v_upper_src)

    map_x = (np.float32(m.cx) + hw * (u_src * c - v_src * s)).astype(np.float32)
    map_y = (np.float32(m.cy) + hw * (u_src * s + v_src * c)).astype(np.float32)
    warped = cv2.remap(ref.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).astype(np.float32)

    original = ref.image[y0:y1, x0:x1].astype(np.float32)
    if opening > 1e-3:
        interior = _interior(original, u_src, v, v_up, v_low, opening)
        # Anti-aliased gap mask, measured in pixels across each lip edge.
        # A gap under a pixel high fades out instead of leaving a hairline across the face.
        alpha = np.clip((v - v_up) * hw + 0.5, 0.0, 1.0) * np.clip((v_low - v) * hw + 0.5, 0.0, 1.0)
        alpha *= np.clip((v_low - v_up) * hw, 0.0, 1.0)
        alpha = alpha[..., None]
        warped = warped * (1.0 - alpha) + interior * alpha

    feather = (1.0 - smoothstep(ROI_HALF_WIDTH - 0.3, ROI_HALF_WIDTH, np.abs(u)))
    feather *= (1.0 - smoothstep(ROI_BOTTOM - 0.3, ROI_BOTTOM, v)) * (1.0 - smoothstep(ROI_TOP - 0.2, ROI_TOP, -v))
    feather = feather[..., None]
    blended = original * (1.0 - feather) + warped * feather
    out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def _interior(original: np.ndarray, u: np.ndarray, v: np.ndarray, v_up: np.ndarray, v_low: np.ndarray, opening: float) -> np.ndarray:
    """Cavity, upper teeth and a hint of tongue, scaled to the face's brightness."""
    luminance = float(original.mean())
    light = np.float32(np.clip(luminance / 170.0, 0.35, 1.4))
    gap = np.maximum(v_low - v_up, 1e-4)
    t = np.clip((v - v_up) / gap, 0.0, 1.0)
    au = np.abs(u)
    # Darker towards the back and the corners.
    depth = (0.55 + 0.45 * (2.0 * t - 1.0) ** 2) * (1.0 - 0.35 * np.clip(au, 0.0, 1.0))
    colour = CAVITY * light * depth[..., None]

    teeth_h = np.minimum(0.16, 0.45 * gap)
    teeth = (1.0 - smoothstep(0.45, 0.7, au)) * (1.0 - smoothstep(0.75, 1.0, (v - v_up) / np.maximum(teeth_h, 1e-4)))
    teeth *= np.clip((gap - 0.04) / 0.08, 0.0, 1.0)  # no teeth in a sliver of a gap
    teeth_colour = TEETH * light * (1.0 - 0.25 * au)[..., None]
    colour = colour * (1.0 - teeth[..., None]) + teeth_colour * teeth[..., None]

    if opening > 0.3:
        tongue = (1.0 - smoothstep(0.35, 0.6, au)) * smoothstep(0.6, 0.85, t) * min(1.0, (opening - 0.3) / 0.3)
        colour = colour * (1.0 - 0.6 * tongue[..., None]) + TONGUE * light * 0.7 * (0.6 * tongue[..., None])
    return colour
