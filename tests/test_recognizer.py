"""The viseme recognizer: the shipped network loads, and hears rounding, spreading, opening and
closing on voices it was not trained on (espeak-ng's, scored like the quality harness)."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_stream.engines import get_engine
from lipsync_stream.engines.recognizer import CONTEXT, FEATURES_PER_HOP, VisemeRecognizer
from lipsync_stream.engines.viseme import VISEMES, VisemeEngine
from lipsync_stream.wire.protocol import FPS, SAMPLE_RATE, AudioFramer

SENTENCES = [
    "Who knew you would choose the blue shoes?",
    "We keep three sheep and feed each of them beans.",
    "Bob moved the boxes over to the brown house.",
    "Father saw a large car far away.",
]
GROUP = {"closed": "closed", "a": "open", "e": "spread", "i": "spread", "o": "round"}


def test_the_shipped_network_fits_the_features_and_the_visemes() -> None:
    recognizer = VisemeRecognizer()
    assert recognizer.classes == list(VISEMES)
    m = recognizer.memberships(np.zeros((3, len(CONTEXT) * FEATURES_PER_HOP), np.float32))
    assert m.shape == (3, len(VISEMES)) and np.allclose(m.sum(axis=1), 1.0)
    engine = get_engine("viseme")
    assert isinstance(engine, VisemeEngine)
    # its context fits in what the engine asks the session for
    assert engine.context_samples >= -CONTEXT[0] * 160 and engine.lookahead_samples <= 1600


def test_it_hears_each_vowel_class_and_closures_on_held_out_voices() -> None:
    espeak = pytest.importorskip("espeak")
    try:
        speaker = espeak.Espeak()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    engine = get_engine("viseme")
    hits: dict[str, list[bool]] = {g: [] for g in set(GROUP.values())}
    for voice in ("en-us", "en-us+f3"):  # never in the training data
        for text in SENTENCES:
            pcm, rate, phonemes = speaker.say(text, voice)
            speech = np.concatenate([np.zeros(6400, np.int16), espeak.resample_to(pcm, rate, SAMPLE_RATE)])
            framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
            framer.push(speech.tobytes())
            framer.flush()
            stream = engine.stream()
            heard = []
            while framer.ready():
                a = stream.analyse(framer.pop())
                heard.append("closed" if a.closure > 0.5 and a.viseme != "sil" else GROUP.get(a.viseme, a.viseme))
            for p in phonemes:
                group = GROUP.get(espeak.PHONEME_VISEME.get(p.symbol, "rest"))
                if group is None:
                    continue
                margin = 0.25 * (p.end - p.start)
                for k in range(len(heard)):
                    t = (k + 0.5) / FPS - 0.4
                    if p.start + margin <= t <= p.end - margin:
                        hits[group].append(heard[k] == group)
    recall = {g: float(np.mean(h)) for g, h in hits.items()}
    assert all(len(h) >= 15 for h in hits.values()), {g: len(h) for g, h in hits.items()}
    assert min(recall.values()) >= 0.65, recall  # the goal, 70 %, with a margin for this small sample
