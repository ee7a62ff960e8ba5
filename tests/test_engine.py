"""The energy engine: silence keeps the reference, speech opens the mouth, output is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from speech_synth import engine_frames

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.engines import CLOSED, MouthShape, get_engine
from lipsync_stream.engines.base import ReferenceFrame, apply_region
from lipsync_stream.engines.mouthwarp import compose_mouth, roi_bounds
from lipsync_stream.wire.protocol import AudioFramer

ENGINE = get_engine("energy")


def draw(ref: ReferenceFrame, shape: MouthShape) -> np.ndarray:
    """The whole frame with *shape* drawn (the renderer composites the region the same way)."""
    return apply_region(ref.image, compose_mouth(ref, shape))


def shapes(pcm: np.ndarray) -> list[MouthShape]:
    return engine_frames(ENGINE, pcm)


def vowel(seconds: float, f0: float = 140.0, amp: float = 0.3) -> np.ndarray:
    """A crude open vowel: harmonics of f0 shaped by formants near 800 and 1200 Hz."""
    t = np.arange(int(seconds * 16000)) / 16000
    sig = sum(np.sin(2 * np.pi * f0 * h * t) * (1.0 / (1 + ((f0 * h - 800) / 300) ** 2) + 0.6 / (1 + ((f0 * h - 1200) / 300) ** 2)) for h in range(1, 30))
    sig = sig / np.abs(sig).max() * amp
    return (sig * 32767).astype(np.int16)


def test_silence_keeps_the_mouth_closed_and_the_frame_untouched() -> None:
    assert all(s == CLOSED for s in shapes(np.zeros(16000, np.int16)))
    ref = load_default_character().reference(0)
    assert np.array_equal(draw(ref, CLOSED), ref.image)


def test_loud_vowel_opens_the_mouth_and_it_closes_after() -> None:
    pcm = np.concatenate([np.zeros(8000, np.int16), vowel(0.6), np.zeros(16000, np.int16)])
    opening = [s.open for s in shapes(pcm)]
    assert max(opening[:13]) == 0.0  # leading silence (the half-frame lookahead may start the move)
    assert max(opening[17:30]) > 0.6
    assert opening[-1] == 0.0


def test_quiet_noise_does_not_flap_the_mouth() -> None:
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(16000) * 40).astype(np.int16)  # about -58 dBFS
    assert max(s.open for s in shapes(hiss)) == 0.0


def test_open_mouth_changes_only_the_lower_face_and_is_deterministic() -> None:
    ref = load_default_character().reference(5)
    a = draw(ref, MouthShape(open=0.8, width=0.2))
    b = draw(ref, MouthShape(open=0.8, width=0.2))
    assert np.array_equal(a, b)
    diff = np.abs(a.astype(int) - ref.image.astype(int)).sum(axis=2)
    y0, y1, x0, x1 = roi_bounds(ref)
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0  # nothing outside the mouth region moves
    assert diff[y0:y1, x0:x1].mean() > 5  # and inside it does
    # the opened mouth is dark in the middle (the cavity), where the closed one is lips
    cx, cy = int(ref.mouth.cx), int(ref.mouth.cy)
    assert a[cy : cy + 12, cx - 10 : cx + 10].mean() < ref.image[cy : cy + 12, cx - 10 : cx + 10].mean() - 30


def test_feathered_blend_has_no_box_edge() -> None:
    ref = load_default_character().reference(0)
    out = draw(ref, MouthShape(open=1.0))
    y0, y1, x0, x1 = roi_bounds(ref)
    diff = np.abs(out.astype(int) - ref.image.astype(int)).sum(axis=2)
    border = np.concatenate([diff[y0, x0:x1], diff[y1 - 1, x0:x1], diff[y0:y1, x0], diff[y0:y1, x1 - 1]])
    assert border.max() <= 6


def test_same_audio_same_frames_and_same_reference_whatever_the_audio() -> None:
    character = load_default_character()
    pcm = vowel(0.5)
    runs = []
    for _ in range(2):
        stream = ENGINE.stream()
        framer = AudioFramer(ENGINE.lookahead_samples)
        framer.push(pcm.tobytes())
        framer.flush()
        frames = []
        while framer.ready():
            f = framer.pop()
            ref = character.reference(f.index)
            frames.append(draw(ref, stream.mouth(f, ref)))
        runs.append(frames)
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    # frame k's background (outside the mouth) is reference ref_index(k), speech or not
    k = 7
    ref = character.reference(k)
    y0, y1, x0, x1 = roi_bounds(ref)
    masked = runs[0][k].copy()
    masked[y0:y1, x0:x1] = ref.image[y0:y1, x0:x1]
    assert np.array_equal(masked, ref.image)


def test_only_an_engine_with_a_reference_pipeline_takes_fidelity_reference() -> None:
    with pytest.raises(ValueError, match="no --fidelity reference"):
        get_engine("viseme", fidelity="reference")
