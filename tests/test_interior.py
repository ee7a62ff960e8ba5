"""The mouth-interior painter shared by the warps: teeth, cavity, tongue, lit like the face."""

from __future__ import annotations

import numpy as np

from lipsync_stream.engines.base import MouthShape
from lipsync_stream.engines.interior import Palette, paint

SKIN = np.array([150.0, 170.0, 200.0], np.float32)


def painted(shape: MouthShape, opening: float = 0.15, skin: np.ndarray = SKIN, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 100x100 box, 1/100 mouth width per pixel, lips at v = -0.05 and v = -0.05 + opening."""
    ys, xs = np.mgrid[0:100, 0:100].astype(np.float32)
    u, v = (xs - 50.0) / 100.0, (ys - 20.0) / 100.0
    v_up = np.full_like(u, -0.05)
    v_low = v_up + np.float32(opening)
    inside = ((v > v_up) & (v < v_low) & (np.abs(u) < 0.45)).astype(np.float32) * np.float32(alpha)
    box = np.full((100, 100, 3), 120, np.uint8)
    paint(box, inside, u, v, v_up, v_low, shape, opening, Palette.from_skin(skin))
    return box, v, inside


def luminance(box: np.ndarray, rows: slice, cols: slice = slice(45, 56)) -> float:
    return float(box[rows, cols].mean())


def test_nothing_changes_outside_the_opening() -> None:
    box, _v, inside = painted(MouthShape(0.8, 0.1))
    assert (box[inside == 0] == 120).all()


def test_upper_teeth_under_the_upper_lip_and_a_dark_cavity_below() -> None:
    box, v, _ = painted(MouthShape(0.8, 0.1))
    teeth = luminance(box, slice(17, 20))  # just under the upper lip (v from -0.03)
    cavity = luminance(box, slice(27, 31))
    assert teeth > cavity + 60
    # teeth are separate: a darker seam between the two front teeth (u = 0) than mid-tooth
    assert box[18, 50].mean() < box[18, 57].mean() - 10


def test_rounded_lips_hide_most_of_the_teeth_and_spread_ones_show_the_lower_row() -> None:
    open_box, _, _ = painted(MouthShape(0.6, 0.0))
    round_box, _, _ = painted(MouthShape(0.6, -0.7, round=1.0))
    assert luminance(round_box, slice(18, 21)) < luminance(open_box, slice(18, 21)) - 30
    spread_box, _, _ = painted(MouthShape(0.4, 0.9), opening=0.1)
    neutral_box, _, _ = painted(MouthShape(0.4, 0.0), opening=0.1)
    lower = slice(22, 25)  # just above the lower lip (at v = 0.05)
    assert luminance(spread_box, lower) > luminance(neutral_box, lower) + 15


def test_colours_follow_the_skin() -> None:
    light, _, _ = painted(MouthShape(0.8, 0.1))
    dark, _, _ = painted(MouthShape(0.8, 0.1), skin=SKIN * 0.4)
    assert luminance(dark, slice(17, 31)) < 0.7 * luminance(light, slice(17, 31))


def test_partial_coverage_blends_with_what_was_there() -> None:
    full, _, inside = painted(MouthShape(0.8, 0.1))
    half, _, _ = painted(MouthShape(0.8, 0.1), alpha=0.5)
    mask = inside > 0
    expected = 0.5 * 120 + 0.5 * full[mask].astype(np.float32)
    assert np.abs(half[mask].astype(np.float32) - expected).max() <= 1.5


def test_open_vowels_show_the_gum_above_the_teeth_and_the_tongue_low_in_the_mouth() -> None:
    box, _, _ = painted(MouthShape(0.95, 0.1), opening=0.2)
    gum = box[16, 45:56].astype(float).mean(axis=0)  # v = -0.04: just under the upper lip
    teeth = box[19, 45:56].astype(float).mean(axis=0)
    assert gum[2] > gum[1] + 25 and teeth.mean() > gum.mean() + 40  # red gum, lighter teeth under it
    closed_lipped, _, _ = painted(MouthShape(0.3, 0.1), opening=0.2)  # the upper lip hardly lifts
    assert closed_lipped[16, 45:56].mean() > box[16, 45:56].mean() + 30  # teeth right under the lip
    tongue = box[32, 45:56].astype(float).mean(axis=0)  # v = 0.12, above the lower lip (0.15)
    cavity = box[28, 45:56].astype(float).mean(axis=0)  # v = 0.08, between teeth and tongue
    assert tongue[2] > cavity[2] + 15 and tongue.mean() < teeth.mean() - 60  # in the mouth's shadow
