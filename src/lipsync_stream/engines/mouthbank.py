"""A character's own mouth interiors: the person's teeth, not drawn ones.

A character made from a talking video opens its mouth in some frames. When the character is
loaded, those frames are found from the landmarks (the gap between the inner lips, in mouth
widths) and a few are kept: at most one per cell of a small grid of openings and mouth widths,
the frame nearest the cell's centre. Of each, the inside of the mouth is resampled into the
mouth's own frame (``u`` across, ``v`` down, in mouth widths: the same for every frame whatever
the head's position, size or tilt), with the inner lips as polylines in that frame.

When a frame needs an open mouth, the warp asks for the interior nearest to the shape's opening
and width and maps it into the target inner lips: each column across the mouth is scaled to
the source's span, and each pixel keeps its distance from the upper lip near the upper lip
(the upper teeth stay the size they are) and from the lower lip near the lower lip. A still
photo, or a video whose mouth never opens, has no bank; the warp then draws the interior
(:mod:`.interior`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..characters.landmarks import LIPS_LOWER_INNER, LIPS_UPPER_INNER, LOWER_LIP_INNER_MID, UPPER_LIP_INNER_MID, MouthFrame

MIN_OPENING = 0.06  # mouth widths between the inner lips: less shows too little inside to keep
OPENING_BINS = np.array([0.06, 0.12, 0.18, 0.26, 0.36, 0.5])  # cell edges; above the last: the last cell
WIDTH_BINS = np.array([0.94, 1.04])  # mouth width against the video's median: narrow, neutral, spread
PIXELS_PER_WIDTH = 128  # the stored interiors' resolution, per mouth width
MARGIN = 0.02  # mouth widths kept above and below the inner lips


@dataclass(frozen=True)
class Interior:
    """One frame's mouth interior in the mouth's frame."""

    frame: int  # the source frame's index (for logs and tests)
    opening: float  # between the inner lips at the middle, mouth widths
    width: float  # the mouth's width against the video's median
    texture: np.ndarray  # (h, w, 3) uint8: u from -0.5 to 0.5 across, v from v_top down
    v_top: float
    upper: np.ndarray  # (n, 2) float64 (u, v) of the inner upper lip, sorted by u
    lower: np.ndarray  # (n, 2) float64 (u, v) of the inner lower lip, sorted by u


class InteriorBank:
    """The kept interiors of one character; :meth:`nearest` picks one for a shape."""

    def __init__(self, interiors: list[Interior]) -> None:
        self.interiors = interiors

    def __len__(self) -> int:
        return len(self.interiors)

    @property
    def nbytes(self) -> int:
        return sum(i.texture.nbytes for i in self.interiors)

    @classmethod
    def from_frames(cls, frames: np.ndarray, landmarks: np.ndarray) -> InteriorBank | None:
        """The bank of a character's frames (N, H, W, 3) and landmarks (N, 478, 2), or None when
        its mouth never opens. Reads only the frames it keeps (a dozen at most)."""
        if len(frames) < 2:
            return None
        frames_uv = [MouthFrame(lm) for lm in landmarks]
        widths = np.array([f.width for f in frames_uv])
        openings = np.array([f.to_uv(lm[[UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID]].astype(np.float64))[:, 1] @ (-1.0, 1.0) for lm, f in zip(landmarks, frames_uv, strict=True)])
        relative = widths / max(float(np.median(widths)), 1e-6)
        candidates = np.nonzero(openings >= MIN_OPENING)[0]
        best: dict[tuple[int, int], tuple[float, int]] = {}
        for i in candidates:
            cell = (int(np.searchsorted(OPENING_BINS, openings[i], side="right")), int(np.searchsorted(WIDTH_BINS, relative[i])))
            o_lo = OPENING_BINS[min(cell[0], len(OPENING_BINS)) - 1]
            o_hi = OPENING_BINS[cell[0]] if cell[0] < len(OPENING_BINS) else o_lo + 0.1
            distance = abs(openings[i] - 0.5 * (o_lo + o_hi)) + 0.5 * abs(relative[i] - 1.0)
            if cell not in best or distance < best[cell][0]:
                best[cell] = (distance, int(i))
        kept = [_extract(int(i), frames[i], landmarks[i], frames_uv[i], float(openings[i]), float(relative[i])) for _, i in sorted(best.values(), key=lambda t: t[1])]
        interiors = [k for k in kept if k is not None]
        return cls(interiors) if interiors else None

    def nearest(self, opening: float, width: float) -> Interior:
        """The kept interior closest to an *opening* (mouth widths) and relative *width*."""
        return min(self.interiors, key=lambda i: abs(i.opening - opening) / 0.05 + abs(i.width - width) / 0.1)


def paint(box: np.ndarray, alpha: np.ndarray, u: np.ndarray, v: np.ndarray, v_up: np.ndarray, v_low: np.ndarray, span: float, interior: Interior) -> None:
    """Map *interior* between the target inner lips: *box* ((h, w, 3) uint8) is changed in place
    where *alpha* says; *u*, *v*, *v_up*, *v_low* as for :func:`.interior.paint`; *span*: half
    the target inner lips' extent across (mouth widths)."""
    src_up, src_low = interior.upper, interior.lower
    # Across: the target's inner lips span the source's (their corners meet).
    span_s = max(0.5 * float(src_up[-1, 0] - src_up[0, 0]), 1e-3)
    s = u * np.float32(min(span_s / max(span, 1e-3), 2.0))
    s_up = np.interp(s, src_up[:, 0], src_up[:, 1]).astype(np.float32)
    s_low = np.interp(s, src_low[:, 0], src_low[:, 1]).astype(np.float32)
    # Down: near the upper lip at the upper lip's scale (the upper teeth keep their size), near
    # the lower lip at the lower lip's, blended across the opening.
    t = np.clip((v - v_up) / np.maximum(v_low - v_up, 1e-4), 0.0, 1.0)
    v_s = (1.0 - t) * (s_up + (v - v_up)) + t * (s_low - (v_low - v))
    map_x = ((s + 0.5) * PIXELS_PER_WIDTH).astype(np.float32)
    map_y = ((v_s - interior.v_top) * PIXELS_PER_WIDTH).astype(np.float32)
    sampled = cv2.remap(interior.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = alpha[..., None]
    box[...] = np.clip(box * (1.0 - a) + sampled * a + 0.5, 0, 255).astype(np.uint8)


def _extract(index: int, image: np.ndarray, lm: np.ndarray, frame: MouthFrame, opening: float, width: float) -> Interior | None:
    """Frame *index*'s interior resampled into the mouth's frame, or None if it leaves the picture."""
    upper = frame.to_uv(lm[LIPS_UPPER_INNER].astype(np.float64))
    lower = frame.to_uv(lm[LIPS_LOWER_INNER].astype(np.float64))
    upper, lower = upper[np.argsort(upper[:, 0])], lower[np.argsort(lower[:, 0])]
    v_top = float(upper[:, 1].min()) - MARGIN
    v_bottom = float(lower[:, 1].max()) + MARGIN
    h, w = max(2, round((v_bottom - v_top) * PIXELS_PER_WIDTH)), PIXELS_PER_WIDTH + 1
    us = np.arange(w, dtype=np.float64) / PIXELS_PER_WIDTH - 0.5
    vs = v_top + np.arange(h, dtype=np.float64) / PIXELS_PER_WIDTH
    xy = frame.to_xy(np.stack(np.meshgrid(us, vs), axis=-1))
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= image.shape[1] - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= image.shape[0] - 1)
    if not inside.all():
        return None
    texture = cv2.remap(np.ascontiguousarray(image), xy[..., 0].astype(np.float32), xy[..., 1].astype(np.float32), cv2.INTER_LINEAR)
    texture.flags.writeable = False
    return Interior(index, opening, width, texture, v_top, upper, lower)
