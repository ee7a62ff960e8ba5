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

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .base import MouthShape

#: where upper teeth meet, in mouth widths from the middle: the central incisors widest, the
#: rest closer together as the arch turns away towards the corners
TOOTH_EDGES = (0.0, 0.15, 0.245, 0.31)
_TOOTH_EDGES = np.asarray(TOOTH_EDGES, np.float32)
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

    @functools.cached_property
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
    the gap between the inner lips at the middle, in mouth widths. One compiled pass over the
    pixels (:func:`_paint_pixels`), which does not hold the GIL.
    """
    rnd = min(max(shape.round, 0.0), 1.0)
    tuck = min(max(shape.tuck, 0.0), 1.0)
    # Rounded, protruding lips (o, u) cover most of the upper teeth.
    teeth_h = min(0.085, 0.55 * opening + 0.02 * tuck) * (1.0 - 0.85 * rnd)
    # The gum above the upper teeth shows when the upper lip lifts off them (open vowels, f/v).
    gum_h = (0.018 * _step(0.4, 1.0, shape.open) * (1.0 - rnd) + 0.01 * tuck) * min(1.0, opening / 0.05)
    # The lower row shows on spread lips (e, i); the tongue in a well-open mouth.
    low_h = 0.04 * _step(0.3, 0.8, shape.width) * _step(0.03, 0.08, opening)
    tongue = _step(0.15, 0.35, opening)
    params = np.array([teeth_h, min(1.0, opening / 0.03), 1.0 if opening > 0.01 else 0.0, low_h, tongue, gum_h, opening], np.float32)
    _paint_pixels(box, alpha, u, v, v_up, v_low, params, _TOOTH_EDGES, palette.matrix)


@njit(nogil=True, cache=True, fastmath=True)
def _step(e0: float, e1: float, x: float) -> float:
    t = min(max((x - e0) / (e1 - e0), 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


@njit(nogil=True, cache=True, fastmath=True)
def _paint_pixels(box, alpha, u, v, v_up, v_low, params, tooth_edges, colours):  # type: ignore[no-untyped-def]
    """Per pixel: weights of four colours (cavity, inner lip, teeth, tongue), then one blend.

    Cavity: dark at the back and the middle, warmer (lip-coloured) near the inner lip edges.
    Upper teeth: a band under the upper lip, narrower than the mouth, each tooth shaded towards
    its neighbours and the corners, with a greyer biting edge; the seams between teeth are
    deepest at the gum and at the biting edge. Lower teeth: a lower, shadowed band over the
    lower lip. Tongue: a soft hump on the lower lip. A soft shadow under the upper lip keeps its
    edge from looking cut out.
    """
    teeth_h, teeth_open, seamed, low_h, tongue_open, gum_h, opening = params[0], params[1], params[2], params[3], params[4], params[5], params[6]
    # The tongue: a hump over the lower teeth, its top an arc across the mouth.
    tongue_w, tongue_h = 0.3, 0.32 * opening
    h, w = alpha.shape
    for y in range(h):
        for x in range(w):
            a = alpha[y, x]
            if a <= 0.0:
                continue
            below_lip = v[y, x] - v_up[y, x]
            above_lower = v_low[y, x] - v[y, x]
            depth = min(max(below_lip / max(v_low[y, x] - v_up[y, x], 1e-4), 0.0), 1.0)
            au = abs(u[y, x])
            lip_edge = min(below_lip, above_lower)
            shade = (0.62 + 0.5 * abs(depth - 0.45) + 0.6 * min(max(au - 0.25, 0.0), 0.3)) * (0.55 + 0.45 * _step(0.0, 0.035, lip_edge))
            warm = 1.0 - _step(0.0, 0.03, lip_edge)
            # gum: a band under the upper lip, its lower edge scalloped where the teeth meet it
            below_gum = below_lip - gum_h
            t_a = _step(-0.012, 0.0, teeth_h - below_gum) * (1.0 - _step(0.26, 0.36, au)) * teeth_open
            seams = 0.0
            if seamed > 0.0:
                for edge in tooth_edges:  # a narrow bump at each boundary
                    d = (au - edge) / (0.009 + 0.009 * edge)
                    seams = max(seams, 1.0 - d * d)
                seams = min(max(seams, 0.0), 1.0)
            gum_a = 0.0
            if gum_h > 0.0:
                gum_a = (1.0 - _step(-0.004, 0.002, below_gum - 0.006 * seams)) * (1.0 - _step(0.24, 0.34, au)) * teeth_open
                t_a *= 1.0 - gum_a
            along = min(max(below_gum / max(teeth_h, 1e-3), 0.0), 1.0)
            seam_depth = 0.12 + 0.26 * (2.0 * along - 1.0) ** 2
            t_shade = (0.78 + 0.22 * math.cos(min(au / 0.36, 1.0) * (math.pi / 2))) * (0.72 + 0.28 * _step(0.0, 0.025, below_lip))
            t_shade *= (1.0 - seam_depth * seams) * (1.0 - 0.22 * _step(0.75, 1.0, along))
            l_a = 0.0
            if low_h > 0.0:
                l_a = _step(-0.008, 0.0, low_h - above_lower) * (1.0 - _step(0.18, 0.27, au)) * (1.0 - t_a)
            l_shade = 0.55 * (1.0 - 0.15 * seams) * (0.8 + 0.2 * _step(0.0, 0.02, above_lower))
            g_a = 0.0
            g_shade = 1.0
            if tongue_open > 0.0 and au < tongue_w:
                arc = math.sqrt(1.0 - (au / tongue_w) ** 2)
                top = tongue_h * arc  # the tongue's top, above the lower lip's inner edge
                g_a = _step(-0.012, 0.01, top - above_lower) * tongue_open * (1.0 - l_a) * (1.0 - t_a)
                # in the mouth's shadow: a little light on its top, darker down its sides, towards
                # the back and along a faint middle groove
                g_shade = (0.55 + 0.2 * _step(0.0, 0.6, arc)) * (1.0 - 0.1 * math.exp(-((u[y, x] / 0.03) ** 2)))
                g_shade *= 0.75 + 0.25 * _step(0.0, 0.03, top - above_lower)
            lit = (1.0 - 0.35 * (1.0 - _step(0.0, 0.03, below_lip))) * a
            rest = (1.0 - t_a) * (1.0 - g_a) * (1.0 - l_a) * (1.0 - gum_a) * lit
            w0 = shade * (1.0 - warm) * rest
            w1 = (0.6 * warm * rest) + 0.85 * gum_a * lit
            w2 = (t_shade * t_a + l_shade * l_a) * (1.0 - g_a) * lit
            w3 = g_shade * g_a * lit
            for c in range(3):
                value = box[y, x, c] * (1.0 - a) + w0 * colours[0, c] + w1 * colours[1, c] + w2 * colours[2, c] + w3 * colours[3, c]
                box[y, x, c] = min(max(value + 0.5, 0.0), 255.0)


def warm_up() -> None:
    """Compile the painter now (about a second the first time, then from numba's cache), so that
    no session's first open mouth waits for it."""
    box = np.zeros((2, 2, 3), np.uint8)
    flat = np.zeros((2, 2), np.float32)
    paint(box, flat + 1.0, flat, flat, flat - 0.1, flat + 0.1, MouthShape(0.5), 0.1, Palette.from_skin(None))
