"""Thin-plate splines for warping an image region with ``cv2.remap``: fit through control
points, evaluate (a vectorisable float32 kernel), and the backward maps of a whole region,
evaluated exactly on a coarse grid and scaled up bilinearly, fading to no displacement at the
region's edge. Every kernel is compiled by numba and lets the GIL go."""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

GRID_STEP = 8  # px between exact spline evaluations; bilinear in between
FEATHER_PX = 16.0  # displacement fades to zero over this many pixels at the region's edge


@njit(nogil=True, cache=True)
def tps_fit(src: np.ndarray, dst: np.ndarray, reg: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Thin-plate spline mapping *src* points onto *dst* points: (weights, affine)."""
    n = len(src)
    a = np.zeros((n + 3, n + 3))
    b = np.zeros((n + 3, 2))
    for i in range(n):
        for j in range(i + 1, n):
            d2 = (src[i, 0] - src[j, 0]) ** 2 + (src[i, 1] - src[j, 1]) ** 2
            a[i, j] = a[j, i] = d2 * math.log(d2 + 1e-12) if d2 > 0.0 else 0.0
        a[i, i] = reg
        a[i, n], a[i, n + 1], a[i, n + 2] = 1.0, src[i, 0], src[i, 1]
        a[n, i], a[n + 1, i], a[n + 2, i] = 1.0, src[i, 0], src[i, 1]
        b[i] = dst[i]
    sol = np.linalg.solve(a, b)
    return sol[:n].copy(), sol[n:].copy()


def _log1p_poly(degree: int = 8) -> np.ndarray:  # _tps_eval unrolls degree 8
    """Coefficients (highest first) of a polynomial for log(1 + t) on [0, 1), fitted at Chebyshev
    nodes: within 1e-6 of it, in float32."""
    t = 0.5 + 0.5 * np.cos(np.pi * (np.arange(64) + 0.5) / 64)
    return np.polyfit(t, np.log1p(t), degree).astype(np.float32)


_LOG1P = _log1p_poly()


def tps_apply(src: np.ndarray, weights: np.ndarray, affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The spline fitted on *src* (:func:`tps_fit`) evaluated at *pts* ((n, 2) float64)."""
    out = np.empty((len(pts), 2))
    _tps_eval(np.asarray(src, np.float64), weights, affine, np.asarray(pts, np.float64), _LOG1P, out)
    return out


@njit(nogil=True, cache=True, fastmath=True)
def _tps_eval(src, weights, affine, pts, log1p, out):  # type: ignore[no-untyped-def]
    """:func:`tps_apply` into *out*. The kernel sums are float32 with a vectorisable logarithm
    (exponent from the float's bits, a polynomial on the mantissa: 1e-6 relative) — ``math.log``
    does not vectorise, and this is most of a frame's spline time."""
    n = len(src)
    sx, sy = src[:, 0].astype(np.float32), src[:, 1].astype(np.float32)
    wx, wy = weights[:, 0].astype(np.float32), weights[:, 1].astype(np.float32)
    d2 = np.empty(n, np.float32)
    bits = d2.view(np.int32)
    k = np.empty(n, np.float32)
    c0, c1, c2, c3, c4, c5, c6, c7, c8 = log1p[0], log1p[1], log1p[2], log1p[3], log1p[4], log1p[5], log1p[6], log1p[7], log1p[8]
    for i in range(len(pts)):
        px, py = np.float32(pts[i, 0]), np.float32(pts[i, 1])
        for j in range(n):
            d2[j] = max((px - sx[j]) ** 2 + (py - sy[j]) ** 2, np.float32(1e-12))
        for j in range(n):
            exponent = np.float32((bits[j] >> 23) - 127)
            t = np.float32(bits[j] & 0x7FFFFF) * np.float32(1.0 / 8388608.0)  # mantissa - 1, in [0, 1)
            poly = (((((((c0 * t + c1) * t + c2) * t + c3) * t + c4) * t + c5) * t + c6) * t + c7) * t + c8
            k[j] = d2[j] * (exponent * np.float32(0.6931471805599453) + poly)
        ax = ay = np.float32(0.0)
        for j in range(n):
            ax += k[j] * wx[j]
            ay += k[j] * wy[j]
        out[i, 0] = ax + affine[0, 0] + pts[i, 0] * affine[1, 0] + pts[i, 1] * affine[2, 0]
        out[i, 1] = ay + affine[0, 1] + pts[i, 0] * affine[1, 1] + pts[i, 1] * affine[2, 1]


def backward_maps(dst: np.ndarray, src: np.ndarray, origin: tuple[int, int], scale: float, h: int, w: int) -> np.ndarray:
    """(h, w, 2) float32 maps for ``cv2.remap`` over the region at *origin* (x, y): for each
    pixel, the reference pixel that the spline from the *dst* to the *src* control points takes
    it to. The spline is fitted from *origin* in units of *scale* px (a well-conditioned system),
    evaluated on a grid of GRID_STEP px cells and scaled up bilinearly; its displacement fades
    to none over FEATHER_PX at the region's edge (no double edges, exactly the reference at the
    edge itself). One call that does not hold the GIL."""
    if h < 2 * GRID_STEP or w < 2 * GRID_STEP:
        raise ValueError(f"a {w}x{h} region is too small for the spline's grid")
    maps = np.empty((h, w, 2), np.float32)
    _maps(dst, src, _grid(h, w), np.array(origin, np.float64), scale, _LOG1P, maps)
    return maps


@njit(nogil=True, cache=True)
def _maps(dst, src, grid, origin, scale, log1p, out):  # type: ignore[no-untyped-def]
    local = (dst - origin) / scale
    weights, affine = tps_fit(local, (src - origin) / scale)
    moved = np.empty(grid.shape)
    _tps_eval(local, weights, affine, grid / scale, log1p, moved)
    h, w = out.shape[0], out.shape[1]
    gh, gw = -(-h // GRID_STEP), -(-w // GRID_STEP)
    coarse = np.empty((gh, gw, 2), np.float32)
    for i in range(len(grid)):
        coarse[i // gw, i % gw, 0] = moved[i, 0] * scale - grid[i, 0]
        coarse[i // gw, i % gw, 1] = moved[i, 1] * scale - grid[i, 1]
    _upscale_into(coarse, origin[0], origin[1], out)


@njit(nogil=True, cache=True, fastmath=True)
def _upscale_into(coarse, x0, y0, out):  # type: ignore[no-untyped-def]
    """*out* (h, w, 2): the *coarse* displacement scaled up GRID_STEP times, bilinear between
    cell centres (as ``cv2.resize`` places them, edges clamped), faded out over FEATHER_PX at
    the edge, plus each pixel's own position in the frame."""
    h, w = out.shape[0], out.shape[1]
    rows, row_t, row_fade = _axis_weights(h, coarse.shape[0])
    cols, col_t, col_fade = _axis_weights(w, coarse.shape[1])
    gh = coarse.shape[0]
    # across first, at the coarse rows (few), then every output row is a blend of two of them
    across = np.empty((gh, 2, w), np.float32)
    for j in range(gh):
        for x in range(w):
            ix, tx = cols[x], col_t[x]
            for c in range(2):
                across[j, c, x] = coarse[j, ix, c] + (coarse[j, ix + 1, c] - coarse[j, ix, c]) * tx
    xs = np.arange(w).astype(np.float32) + np.float32(x0)
    for y in range(h):
        iy, ty, fy, py = rows[y], row_t[y], row_fade[y], np.float32(y + y0)
        a0, a1, b0, b1 = across[iy, 0], across[iy, 1], across[iy + 1, 0], across[iy + 1, 1]
        for x in range(w):
            fade = min(fy, col_fade[x])
            out[y, x, 0] = (a0[x] + (b0[x] - a0[x]) * ty) * fade + xs[x]
            out[y, x, 1] = (a1[x] + (b1[x] - a1[x]) * ty) * fade + py


@njit(nogil=True, cache=True)
def _axis_weights(n, cells):  # type: ignore[no-untyped-def]
    """Along one axis of *n* pixels over *cells* coarse cells: each pixel's lower cell and its
    weight towards the next (a cell's centre at GRID_STEP * (i + 0.5) - 0.5), and the edge fade."""
    first = np.empty(n, np.int64)
    t = np.empty(n, np.float32)
    fade = np.empty(n, np.float32)
    for p in range(n):
        f = min(max((p + 0.5) / GRID_STEP - 0.5, 0.0), cells - 1.0)
        first[p] = min(int(f), max(cells - 2, 0))
        t[p] = f - first[p] if cells > 1 else 0.0
        e = min(max(min(p, n - 1 - p) / FEATHER_PX, 0.0), 1.0)
        fade[p] = e * e * (3.0 - 2.0 * e)
    return first, t, fade


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int) -> np.ndarray:
    """The coarse grid's points (x, y) for an h x w region: one per GRID_STEP x GRID_STEP cell,
    at the cell's centre, which is where ``cv2.resize`` puts a coarse pixel when it scales the
    grid up by GRID_STEP (so that the bilinear upscaling is exact there)."""
    gy = (np.arange(-(-h // GRID_STEP), dtype=np.float64) + 0.5) * GRID_STEP - 0.5
    gx = (np.arange(-(-w // GRID_STEP), dtype=np.float64) + 0.5) * GRID_STEP - 0.5
    out = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    out.flags.writeable = False
    return out
