"""The speech front end: framing, level, voicing and formant positions on known signals."""

from __future__ import annotations

import numpy as np
from speech_synth import vowel

from lipsync_stream.engines.features import analyse, frames_at, levinson


def test_frames_are_centred_and_zero_padded() -> None:
    x = np.arange(1000, dtype=np.int16)
    f = frames_at(x, np.array([0, 500]), width=4)
    assert f[0].tolist() == [0, 0, 0, 1] and f[1].tolist() == [498, 499, 500, 501]


def test_level_and_voicing() -> None:
    t = np.arange(16000) / 16000
    tone = (0.1 * 32767 * np.sin(2 * np.pi * 150 * t)).astype(np.int16)
    noise = (np.random.default_rng(0).standard_normal(16000) * 0.1 * 32767).astype(np.int16)
    c = np.arange(1000, 15000, 160)
    ft, fn = analyse(tone, c), analyse(noise, c)
    assert np.allclose(ft.level_db, 20 * np.log10(0.1 / np.sqrt(2)), atol=0.5)
    assert ft.voicing.min() > 0.9 and fn.voicing.max() < 0.5


def test_levinson_recovers_an_ar_process() -> None:
    rng = np.random.default_rng(1)
    e = rng.standard_normal(20000)
    x = np.zeros_like(e)
    for n in range(2, len(e)):
        x[n] = 1.3 * x[n - 1] - 0.6 * x[n - 2] + e[n]
    r = np.array([[np.dot(x[: len(x) - k], x[k:]) for k in range(3)]])
    assert np.allclose(levinson(r, 2)[0], [1.0, -1.3, 0.6], atol=0.03)


def test_formant_centroids_order_the_vowels() -> None:
    c = np.arange(1000, 7000, 160)
    f = {n: analyse(vowel(n, 0.5), c) for n in "aiu"}
    f1 = {n: np.median(v.f1_centroid) for n, v in f.items()}
    f2 = {n: np.median(v.f2_centroid) for n, v in f.items()}
    assert f1["a"] > f1["u"] > f1["i"] - 50 and f1["a"] > 650
    assert f2["i"] > f2["a"] and f2["i"] > f2["u"] and f2["i"] > 2000


def test_hop_cache_gives_exactly_what_computing_gives(speech: np.ndarray) -> None:
    from lipsync_stream.engines.features import HopCache
    from lipsync_stream.protocol import AudioFramer

    framer = AudioFramer(lookahead=1280, context=960)
    framer.push(speech[:24000].tobytes())
    cache = HopCache()
    while framer.ready():
        f = framer.pop()
        centres = 900 + np.arange(13) * 160 - (f.start + 900) % 160
        cached = cache.features(f.window, centres, f.start, f.valid, f.epoch).matrix()
        assert np.array_equal(cached, analyse(f.window, centres).matrix())
