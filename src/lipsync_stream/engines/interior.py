"""The inside of an open mouth: cavity, teeth, tongue, the inner lip, lit like the face.

One painter for every warp. A warp knows where the inner lips land; it hands this module, for
each pixel of a box round the opening, its coordinates in the mouth's own frame (``u`` along the
lip line, ``v`` down, both in mouth widths, origin between the corners), the inner upper and
lower lip edges above and below it (``v_up``, ``v_low``) and how much of the pixel lies between
them (``alpha``, anti-aliased). The painter works out the rest from the mouth shape: the upper
teeth under the upper lip (separate teeth, narrower towards the corners as the arch turns away),
the lower row when the lips spread, a cavity dark at the back and warm at the lip edges, the
tongue low in a well-open mouth. Colours come from the character's own skin (:class:`Palette`),
so the interior follows its lighting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import MouthShape

#: where upper teeth meet, in mouth widths from the middle: the central incisors widest, the
#: rest closer together as the arch turns away towards the corners
TOOTH_EDGES = (0.0, 0.15, 0.245, 0.31)
#: a face of this mean luminance gets the base colours unscaled
BASE_LUMINANCE = 170.0


def smoothstep(e0: float, e1: float, x: np.ndarray | float) -> np.ndarray:
    """0 below e0, 1 above e1, smooth between; keeps float32 arrays float32."""
    t = np.clip((np.asarray(x) - e0) * (1.0 / (e1 - e0)), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class Palette:
    """The interior's colours (BGR float32), derived from the skin next to the mouth."""

    cavity: np.ndarray
    lip_inner: np.ndarray  # the wet inner lip, in shadow
    teeth: np.ndarray
    tongue: np.ndarray

    @classmethod
    def from_skin(cls, skin: np.ndarray | None) -> Palette:
        """Colours for a face whose skin near the mouth has mean colour *skin* (BGR)."""
        skin_col = np.array([150.0, 170.0, 200.0], np.float32) if skin is None else np.asarray(skin, np.float32)
        light = float(np.clip(skin_col.mean() / BASE_LUMINANCE, 0.35, 1.4))
        # Teeth: off-white tinted by the skin's light, never brighter than the brightest skin.
        teeth = (0.6 * np.array([176.0, 200.0, 222.0], np.float32) + 0.4 * skin_col) * min(1.0, 0.35 + 0.6 * light)
        return cls(
            cavity=np.array([38.0, 34.0, 70.0], np.float32) * light,
            lip_inner=np.array([64.0, 60.0, 128.0], np.float32) * light,
            teeth=np.minimum(teeth, skin_col.max() * 1.05).astype(np.float32),
            tongue=np.array([92.0, 98.0, 178.0], np.float32) * light,
        )

    def matrix(self) -> np.ndarray:
        """(4 colours, 3 channels), in the order of :func:`paint`'s weights."""
        return np.stack([self.cavity, self.lip_inner, self.teeth, self.tongue]).astype(np.float32)


def paint(
    box: np.ndarray,
    alpha: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    v_up: np.ndarray,
    v_low: np.ndarray,
    shape: MouthShape,
    opening: float,
    palette: Palette,
) -> None:
    """Paint the interior into *box* ((h, w, 3) uint8, in place) where *alpha* says.

    *u*, *v*, *v_up*, *v_low*, *alpha*: (h, w) float32 (see the module's docstring); *opening*:
    the gap between the inner lips at the middle, in mouth widths.
    """
    below_lip = v - v_up
    above_lower = v_low - v
    depth = np.clip(below_lip / np.maximum(v_low - v_up, 1e-4), 0.0, 1.0)  # 0 at the upper lip, 1 at the lower
    au = np.abs(u)

    # Per-pixel weights of four colours, then one blend. Cavity: dark at the back and the middle,
    # warmer (lip-coloured) near the inner lip edges. Upper teeth: a band under the upper lip,
    # narrower than the mouth, each tooth shaded towards its neighbours and the corners, with a
    # greyer biting edge. Lower teeth: a lower, shadowed band over the lower lip when the lips
    # spread (e, i). Tongue: a soft hump on the lower lip when the mouth is well open. A soft
    # shadow under the upper lip keeps its edge from looking cut out.
    # Rounded, protruding lips (o, u) cover most of the upper teeth.
    teeth_h = min(0.085, 0.55 * opening + 0.02 * shape.tuck) * (1.0 - 0.7 * min(max(shape.round, 0.0), 1.0))
    lip_edge = np.minimum(below_lip, above_lower)
    shade = (0.62 + 0.5 * np.abs(depth - 0.45) + 0.6 * np.clip(au - 0.25, 0.0, 0.3)) * (0.55 + 0.45 * smoothstep(0.0, 0.035, lip_edge))
    warm = 1.0 - smoothstep(0.0, 0.03, lip_edge)  # the inner lip's own red, fading into the cavity
    t_a = smoothstep(-0.012, 0.0, teeth_h - below_lip) * (1.0 - smoothstep(0.26, 0.36, au)) * min(1.0, opening / 0.03)
    # Tooth boundaries, closer together towards the corners (the arch turns away): dark seams,
    # widest at the gum and at the biting edge.
    seams = np.zeros_like(u)
    if opening > 0.01:  # no tooth shows otherwise
        for edge in TOOTH_EDGES:  # a narrow bump at each boundary (a parabola: cheaper than exp)
            np.maximum(seams, 1.0 - np.square((au - edge) / (0.009 + 0.009 * edge)), out=seams)
        np.clip(seams, 0.0, 1.0, out=seams)
    along = np.clip(below_lip / max(teeth_h, 1e-3), 0.0, 1.0)
    seam_depth = 0.12 + 0.26 * np.square(2.0 * along - 1.0)
    t_shade = (0.78 + 0.22 * np.cos(np.minimum(au / 0.36, 1.0) * (math.pi / 2))) * (0.72 + 0.28 * smoothstep(0.0, 0.025, below_lip))
    t_shade = t_shade * (1.0 - seam_depth * seams) * (1.0 - 0.22 * smoothstep(0.75, 1.0, along))
    low_h = 0.04 * float(smoothstep(0.3, 0.8, shape.width)) * float(smoothstep(0.03, 0.08, opening))
    l_a = smoothstep(-0.008, 0.0, low_h - above_lower) * (1.0 - smoothstep(0.18, 0.27, au)) * (1.0 - t_a) if low_h > 0 else np.zeros_like(u)
    l_shade = 0.55 * (1.0 - 0.15 * seams) * (0.8 + 0.2 * smoothstep(0.0, 0.02, above_lower))
    g_a = 0.8 * smoothstep(0.55, 0.85, depth) * (1.0 - smoothstep(0.18, 0.32, au)) * float(smoothstep(0.12, 0.3, opening)) * (1.0 - l_a)
    lit = (1.0 - 0.35 * (1.0 - smoothstep(0.0, 0.03, below_lip))) * alpha
    rest = (1.0 - t_a) * (1.0 - g_a) * (1.0 - l_a) * lit
    weights = np.stack(
        [shade * (1.0 - warm) * rest, 0.6 * warm * rest, (t_shade * t_a + l_shade * l_a) * (1.0 - g_a) * lit, g_a * lit],
        axis=-1,
    ).astype(np.float32)
    blended = box.astype(np.float32) * (1.0 - alpha)[..., None] + weights @ palette.matrix()
    np.clip(blended + 0.5, 0, 255, out=blended)
    box[...] = blended.astype(np.uint8)
