"""The viseme engine: speech sounds -> mouth shapes, drawn with a landmark-driven warp.

Per 10 ms hop the front end (:mod:`.features`) gives level, voicing, band energies, a nasal
murmur measure and a log-mel spectrum. Two listeners share the work, each
on what it hears best, over the engine's visemes:

- ``sil``: silence (lips closed, relaxed), ``closed``: p/b/m and hums (lips pressed together),
- ``a`` open, ``e`` mid, ``i`` spread, ``o`` round (o/u/w), ``fv`` lower lip to upper teeth,
- ``rest``: other consonants (slightly parted, teeth together for s/z/sh).

Soft rules on the level and the murmur say how much of the frame is silence (exact on any voice:
below an absolute gate, or far under the loudest recent speech) and where the lips close on a
hum or a voice bar (a nasal murmur has its energy below 300 Hz, a vowel of the same loudness
does not). The recognizer (:mod:`.recognizer`, a small network trained here on synthetic speech)
says which of the others the sound under the frame's centre is, from 100 ms before it to 80 ms
after (within the declared lookahead): it hears rounding and spreading, which the rules on
formant positions did not. Each viseme has a target mouth shape; a frame's shape is the
membership-weighted mean. A closure is never blurred: a closure inside the frame's own 33 ms,
or a silence right after speech, closes the lips.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from ..protocol import FPS, SAMPLE_RATE, AudioFrame
from . import features, interior, meshwarp
from .base import Engine, EngineStream, LearnedMouth, MouthShape, ReferenceFrame, Region
from .features import BAND0, BANDS, HOP, LEVEL, MURMUR_MID, MURMUR_UPPER, VOICING, HopCache
from .meshwarp import compose_region
from .recognizer import CONTEXT, FEATURES_PER_HOP, PEAK_FLOOR_DB, VisemeRecognizer, forward, hop_inputs_into

VISEMES = ("sil", "closed", "a", "e", "i", "o", "fv", "rest")

#: target mouth per viseme: open (0..1), width (-1 round .. 1 spread), round (0..1), tuck (f/v)
TARGETS: dict[str, MouthShape] = {
    "sil": MouthShape(0.0, 0.0),
    "closed": MouthShape(0.0, 0.0),
    "a": MouthShape(0.95, 0.15),
    "e": MouthShape(0.5, 0.75),
    "i": MouthShape(0.25, 1.0),
    "o": MouthShape(0.45, -0.7, round=1.0),
    "fv": MouthShape(0.12, 0.1, tuck=1.0),
    "rest": MouthShape(0.22, 0.2),
}
_TARGET_MATRIX = np.array([[t.open, t.width, t.round, t.tuck] for t in (TARGETS[v] for v in VISEMES)], dtype=np.float64)


GATE_DB = -50.0  # absolute: below this it is silence
FLOOR_BELOW_PEAK_DB = 38.0  # relative: this far under the loudest recent speech is silence too
PEAK_DECAY_DB_PER_FRAME = 0.03
LEAD_S, SPREAD_S = 0.02, 0.04  # the rules' kernel over hops: where the mouth listens most
CLOSURE_PAST_S = 0.04  # speech this recent before a silence makes the silence a closure
PAST_HOPS, FUTURE_HOPS = -int(CONTEXT[0]), int(CONTEXT[-1])  # the recognizer's: 100 ms before the centre, 80 after
_HOP_OFFSETS = np.arange(-PAST_HOPS, FUTURE_HOPS + 1)
_LOW, _F1, _F2 = (BAND0 + list(BANDS).index(band) for band in ("low", "f1", "f2"))
LOOKAHEAD_SAMPLES = 1280  # 80 ms after the frame's end: FUTURE_HOPS past its centre plus half a hop window
CONTEXT_SAMPLES = 1600  # 100 ms before the frame's start


@njit(nogil=True, cache=True)
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@njit(nogil=True, cache=True)
def silence_and_hum(row, floor_db):  # type: ignore[no-untyped-def]
    """For one hop (a row of :func:`.features.hop_matrix`), 0..1: how silent it is (under the
    floor), and how much of it is a hum or a nasal murmur with the lips closed (its energy below
    600 Hz: nothing in 1.5-3.5 kHz or, for a short m in running speech, a weak first-formant band
    while 0.6-1.5 kHz still carries some).
    """
    speech = _sigmoid((row[LEVEL] - floor_db) / 2.0)
    voiced = _sigmoid((row[VOICING] - 0.6) / 0.08)
    mouth_db = max(row[_F1], row[_F2]) - row[_LOW]
    upper, mid = row[MURMUR_UPPER], row[MURMUR_MID]
    hum = voiced * max(_sigmoid((-32.0 - upper) / 3.0), _sigmoid((-5.0 - mouth_db) / 1.5) * _sigmoid((-17.0 - upper) / 2.0) * _sigmoid((mid + 22.0) / 3.0))
    return 1.0 - speech, speech * hum


@njit(nogil=True, cache=True)
def _decide(m, offsets, peak_db, mean, scale, weights, biases):  # type: ignore[no-untyped-def]
    """One frame from its hops' rows *m* at *offsets* (seconds from the frame's centre), in one
    call that does not hold the GIL: (viseme memberships, strongest closure inside the frame,
    whether every hop is silence or hum, the loudness tracker's new peak)."""
    n = m.shape[0]
    half_frame = 0.5 / FPS
    loudest = -np.inf
    for i in range(n):
        if abs(offsets[i]) <= half_frame:
            loudest = max(loudest, m[i, LEVEL])
    peak = max(loudest, peak_db - PEAK_DECAY_DB_PER_FRAME, PEAK_FLOOR_DB)
    floor_db = max(GATE_DB, peak - FLOOR_BELOW_PEAK_DB)
    # The rules say how much of the frame is silence (from the level: exact on any voice);
    # the recognizer which shape the sound under the frame's centre needs.
    quiet, hum = np.empty(n), np.empty(n)
    weighted = total = 0.0
    for i in range(n):
        quiet[i], hum[i] = silence_and_hum(m[i], floor_db)
        w = math.exp(-(((offsets[i] - LEAD_S) / SPREAD_S) ** 2))
        weighted += w * quiet[i]
        total += w
    silent = weighted / total
    inputs = np.empty((n, FEATURES_PER_HOP), np.float32)
    hop_inputs_into(m, np.full(n, peak), inputs)
    heard = np.empty((1, len(biases[-1])), np.float32)
    forward(inputs.reshape(1, -1), mean, scale, weights, biases, heard)
    frame_m = (1.0 - silent) * heard[0].astype(np.float64)
    frame_m[0] += silent
    # A closure inside the frame: a hum or m, or a silence that follows speech (a stop's closure,
    # or the end of a phrase). Silence before the first sound is not one: the lips may part early.
    after_speech = inside_hum = inside_quiet = 0.0
    for i in range(n):
        if -CLOSURE_PAST_S <= offsets[i] < -half_frame:
            after_speech = max(after_speech, 1.0 - quiet[i])
        if abs(offsets[i]) <= half_frame:
            inside_hum, inside_quiet = max(inside_hum, hum[i]), max(inside_quiet, quiet[i])
    closure = max(inside_hum, inside_quiet * after_speech, frame_m[1])
    return frame_m, closure, (quiet + hum).min() > 0.98, peak


@dataclass(frozen=True)
class FrameAnalysis:
    """What the engine decided for one frame (kept for tests and the quality harness)."""

    shape: MouthShape
    viseme: str  # the dominant viseme at the frame's centre
    closure: float  # strongest closure inside the frame


class VisemeStream(EngineStream):
    """One session's loudness tracker and hop cache; the same audio always gives the same shapes."""
    def __init__(self, engine: VisemeEngine) -> None:
        self.engine = engine
        self.peak_db = -20.0
        self._hops = HopCache()

    def analyse(self, frame: AudioFrame) -> FrameAnalysis:
        window = frame.window
        ctx, ahead = self.engine.context_samples, self.engine.lookahead_samples
        frame_len = len(window) - ctx - ahead
        # Hops sit on the stream's 10 ms grid (not the frame's), so consecutive frames share them.
        centre = ctx + frame_len // 2
        grid_centre = centre - (frame.start + centre) % HOP
        centres = grid_centre + _HOP_OFFSETS * HOP
        offsets = (centres - (ctx + frame_len / 2.0)) / SAMPLE_RATE
        started = time.perf_counter()
        m = self._hops.matrix(window, centres, frame.start, frame.valid, frame.epoch)
        self.feature_seconds += time.perf_counter() - started
        frame_m, closure, all_quiet, self.peak_db = _decide(m, offsets, self.peak_db, *self.engine.recognizer.kernel_args)
        if all_quiet:
            shape = MouthShape()
        else:
            params = frame_m @ _TARGET_MATRIX
            shape = MouthShape(float(params[0]), float(params[1]), float(params[2]), float(params[3]))
        if closure > 0.5:
            # Lips meet: no blur across a closure, but keep the spread/rounding it is coarticulated with.
            shape = MouthShape(0.0, shape.width * 0.5, shape.round * 0.5, 0.0)
        return FrameAnalysis(shape, VISEMES[int(np.argmax(frame_m))], float(closure))

    def mouth(self, frame: AudioFrame, ref: ReferenceFrame) -> MouthShape:
        return self.analyse(frame).shape

    def silent(self) -> bool:
        # An all-zero window is silence in every hop: the rules give the rest shape, whatever came
        # before (no smoothing state); only the loudness peak decays, as analyse() would do.
        self.peak_db = max(self.peak_db - PEAK_DECAY_DB_PER_FRAME, -35.0)
        return True

    def draw(self, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any = None) -> Region | None:
        assert isinstance(mouth, MouthShape)
        return compose_region(ref, mouth)


class VisemeEngine(Engine):
    """``--engine viseme`` (the default): rules and the recognizer hear the viseme, the mesh warp draws it."""
    name = "viseme"
    lookahead_samples = LOOKAHEAD_SAMPLES
    context_samples = CONTEXT_SAMPLES

    def __init__(self) -> None:
        self.recognizer = VisemeRecognizer()

    def stream(self) -> VisemeStream:
        return VisemeStream(self)

    def warm_up(self) -> None:
        features.warm_up()
        interior.warm_up()
        meshwarp.warm_up()
        # the front end and the frame's decision, compiled now (then from numba's cache)
        window = np.random.default_rng(0).integers(-3000, 3000, self.context_samples + 533 + self.lookahead_samples).astype(np.int16)
        self.stream().analyse(AudioFrame(0, window[:533].tobytes(), window, 0, len(window)))
