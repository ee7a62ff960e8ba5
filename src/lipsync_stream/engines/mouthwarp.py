"""Draw an open mouth on a closed-mouth reference frame, by warping it.

Shared by engines that produce a :class:`MouthShape`. In the mouth's own coordinates (units of
the mouth's half-width, ``u`` along the lip line, ``v`` down), the lower lip and jaw move down,
the upper lip lifts a little, the corners spread or round, and the lens-shaped gap between the
lips is filled by the shared interior painter (:mod:`.interior`). Every displacement fades to
zero before the edge of the region it touches, and the region is blended with a feathered mask,
so no box is ever visible. A closed, neutral shape changes nothing. The meshwarp engine uses
this warp for faces without landmarks.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from . import interior
from .base import MouthShape, ReferenceFrame, Region
from .interior import Palette, smoothstep

# Region around the mouth that may change, in half-widths.
ROI_HALF_WIDTH = 1.9
ROI_TOP = 0.9
ROI_BOTTOM = 2.6

MAX_DROP = 0.55  # lower lip travel at open=1
MAX_LIFT = 0.12  # upper lip travel at open=1
MAX_SPREAD = 0.12  # corner travel at width=±1


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


def compose_mouth(ref: ReferenceFrame, shape: MouthShape, align: int = 16) -> Region | None:
    """The rows of the reference frame that *shape* changes, with the mouth opened/shaped as it
    says: (first row, band of full-width rows starting and ending on multiples of *align*).
    None: nothing changes (a closed, neutral mouth)."""
    if shape.open <= 1e-3 and abs(shape.width) <= 1e-3:
        return None
    m = ref.mouth
    hw = float(m.half_width)
    y0, y1, x0, x1 = roi_bounds(ref)
    if y1 - y0 < 4 or x1 - x0 < 4:
        return None
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
    warped = cv2.remap(ref.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    original = ref.image[y0:y1, x0:x1]
    if opening > 1e-3:
        # Anti-aliased gap mask, measured in pixels across each lip edge.
        # A gap under a pixel high fades out instead of leaving a hairline across the face.
        alpha = np.clip((v - v_up) * hw + 0.5, 0.0, 1.0) * np.clip((v_low - v) * hw + 0.5, 0.0, 1.0)
        alpha *= np.clip((v_low - v_up) * hw, 0.0, 1.0)
        # The painter's units are mouth widths (two half-widths); its colours come from the skin
        # above the upper lip.
        half = np.float32(0.5)
        palette = Palette.from_skin(_skin_colour(ref))
        interior.paint(warped, alpha.astype(np.float32), u_src * half, v * half, v_up * half, v_low * half, shape, (drop + lift) * 0.5, palette)

    feather = (1.0 - smoothstep(ROI_HALF_WIDTH - 0.3, ROI_HALF_WIDTH, np.abs(u)))
    feather *= (1.0 - smoothstep(ROI_BOTTOM - 0.3, ROI_BOTTOM, v)) * (1.0 - smoothstep(ROI_TOP - 0.2, ROI_TOP, -v))
    feather = feather[..., None]
    blended = original.astype(np.float32) * (1.0 - feather) + warped.astype(np.float32) * feather
    top = (y0 // align) * align
    bottom = min(ref.image.shape[0], -(-y1 // align) * align)
    band = ref.image[top:bottom].copy()
    band[y0 - top : y1 - top, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return top, band


def _skin_colour(ref: ReferenceFrame) -> np.ndarray | None:
    """Mean colour of the skin above the upper lip (between it and the nose)."""
    m = ref.mouth
    r = max(2, int(0.12 * m.half_width))
    x = int(m.cx + 0.45 * m.half_width * math.sin(m.angle))
    y = int(m.cy - 0.45 * m.half_width * math.cos(m.angle))
    skin = ref.image[max(0, y - r) : y + r : 2, max(0, x - r) : x + r : 2].reshape(-1, 3)
    return skin.mean(axis=0, dtype=np.float32) if len(skin) else None
