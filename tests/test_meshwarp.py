"""Landmark-driven rendering: where it draws, how the mouth looks, and that it closes open mouths."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.characters.landmarks import FaceMesher
from lipsync_stream.engines.base import MouthShape, ReferenceFrame, apply_region
from lipsync_stream.engines.meshwarp import MouthFrame, compose_region, rig_for
from lipsync_stream.engines.spline import tps_apply, tps_fit
from lipsync_stream.engines.viseme import TARGETS

CHARACTER = load_default_character()


def draw(ref: ReferenceFrame, shape: MouthShape) -> np.ndarray:
    """The whole frame with *shape* drawn (the renderer composites the region the same way)."""
    return apply_region(ref.image, compose_region(ref, shape))


def gap(lm: np.ndarray) -> float:
    """Inner-lip opening in mouth widths."""
    f = MouthFrame(lm)
    return float(f.to_uv(lm[14].astype(np.float64))[1] - f.to_uv(lm[13].astype(np.float64))[1])


def test_tps_interpolates_its_points() -> None:
    src = np.random.default_rng(0).uniform(0, 1, (12, 2))
    dst = src + np.random.default_rng(1).normal(0, 0.05, (12, 2))
    w, a = tps_fit(src, dst, reg=0.0)
    assert np.allclose(tps_apply(src, w, a, src), dst, atol=1e-4)


def test_tps_between_its_points_is_the_thin_plate_spline() -> None:
    # the compiled evaluation (float32 sums, a polynomial logarithm) against the formula in float64
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 3, (80, 2))
    w, a = tps_fit(src, src + rng.normal(0, 0.05, (80, 2)))
    pts = rng.uniform(-0.5, 3.5, (500, 2))
    d2 = ((pts[:, None, :] - src[None, :, :]) ** 2).sum(-1)
    exact = np.where(d2 > 0, d2 * np.log(np.maximum(d2, 1e-300)), 0.0) @ w + a[0] + pts @ a[1:]
    assert np.abs(tps_apply(src, w, a, pts) - exact).max() < 1e-3


def test_rest_on_a_closed_mouth_is_the_reference() -> None:
    ref = CHARACTER.reference(3)
    assert np.array_equal(draw(ref, MouthShape()), ref.image)


@pytest.mark.parametrize("viseme", ["a", "e", "i", "o", "fv"])
def test_shapes_change_only_the_lower_face_without_a_seam(viseme: str) -> None:
    ref = CHARACTER.reference(20)
    out = draw(ref, TARGETS[viseme])
    diff = np.abs(out.astype(int) - ref.image.astype(int)).sum(axis=2)
    y0, y1, x0, x1 = rig_for(ref.landmarks, ref.image).roi
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0
    assert diff[y0:y1, x0:x1].mean() > 0.5
    border = np.concatenate([diff[y0, x0:x1], diff[y1 - 1, x0:x1], diff[y0:y1, x0], diff[y0:y1, x1 - 1]])
    assert border.max() == 0  # the warp fades to nothing at the region's edge
    eyes = int(ref.landmarks[[33, 263], 1].max()) + 5
    assert out[:eyes].tobytes() == ref.image[:eyes].tobytes()  # eyes and above untouched


def test_open_mouth_shows_a_dark_cavity_and_drops_the_jaw() -> None:
    ref = CHARACTER.reference(0)
    out = draw(ref, TARGETS["a"])
    with FaceMesher(video=False) as mesher:
        lm = mesher.landmarks(out)
    assert lm is not None
    assert gap(lm) > 0.25  # the face-mesh model itself sees an open mouth
    assert lm[152, 1] - ref.landmarks[152, 1] > 0.1 * MouthFrame(ref.landmarks).width  # chin went down
    cx, cy = (0.5 * (lm[13] + lm[14])).astype(int)
    assert out[cy - 3 : cy + 4, cx - 5 : cx + 6].mean() < 0.5 * ref.image[cy - 3 : cy + 4, cx - 5 : cx + 6].mean()


def test_an_open_reference_mouth_can_be_closed() -> None:
    """Characters from talking videos have open mouths in some frames; silence must still close them."""
    opened = draw(CHARACTER.reference(0), TARGETS["a"])
    with FaceMesher(video=False) as mesher:
        lm = mesher.landmarks(opened)
        assert lm is not None and gap(lm) > 0.25
        closed = draw(ReferenceFrame(0, opened, CHARACTER.reference(0).mouth, lm), MouthShape())
        lm2 = mesher.landmarks(closed)
    assert lm2 is not None and gap(lm2) < 0.08


def test_round_is_narrower_than_spread() -> None:
    ref = CHARACTER.reference(0)
    width = {}
    with FaceMesher(video=False) as mesher:
        for v in ("i", "o"):
            lm = mesher.landmarks(draw(ref, TARGETS[v]))
            assert lm is not None
            width[v] = float(np.hypot(*(lm[291] - lm[61])))
    assert width["o"] < 0.9 * width["i"]


def test_rounded_lips_make_an_oval_not_a_smile() -> None:
    """o/u: the smiling default character's upper inner lip (lowest in the middle) arches upwards."""
    ref = CHARACTER.reference(0)
    rig = rig_for(ref.landmarks, ref.image)
    upper = [rig.frame.to_uv(p) for p in rig.targets(TARGETS["o"])[[list(rig_moving()).index(i) for i in (80, 13, 310)]]]
    (_u_l, v_left), (_u, v_mid), (_u_r, v_right) = upper
    assert v_mid < min(v_left, v_right) - 0.01  # the middle is the highest point: an arch
    spread = [rig.frame.to_uv(p) for p in rig.targets(TARGETS["i"])[[list(rig_moving()).index(i) for i in (80, 13, 310)]]]
    assert spread[1][1] > min(spread[0][1], spread[2][1])  # spread lips keep the smile


def rig_moving() -> np.ndarray:
    from lipsync_stream.engines.meshwarp import _MOVING

    return _MOVING
