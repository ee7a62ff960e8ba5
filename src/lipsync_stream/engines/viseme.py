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
formant positions did not. Each viseme has a target mouth shape; a frame's width, rounding and
tuck are the membership-weighted mean.

How far the lips part, and where they press together, comes from the opening model
(:mod:`.opening`), trained on real people's mouths: the recognizer, which heard only a
synthesizer, said "closed" in a fifth of real speakers' frames, mostly where their lips were
parted. A closure is never blurred: where the model's likeliest closure inside the frame's own
33 ms passes :data:`CLOSED_FROM`, the lips close. (A hum under the frame used to close them too;
the model hears hums itself, and on real speakers that rule shut a seventh of all frames, mostly
where their lips were parted; a hum that fills every hop the recognizer hears still rests them.)
A pause rests them: when nine in ten of the hops the recognizer hears are silence (a short gap
between words does not shut a real mouth, and on real speakers closing in every gap followed
their lips worse).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba import njit

from ..wire.protocol import FPS, SAMPLE_RATE, AudioFrame
from . import features, footage, interior, meshwarp, opening
from .base import Engine, EngineStream, LearnedMouth, MouthShape, ReferenceFrame, Region, apply_region
from .features import BAND0, BANDS, HOP, LEVEL, MURMUR_MID, MURMUR_UPPER, VOICING, WIN, HopCache
from .meshwarp import compose_region
from .opening import OpeningModel, PredictionCache, frame_opening
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
# A recording's pauses are not digital silence but its room: while the sound is as steady as a
# room (the quietest hop of each of the last STEADY_FRAMES frames within STEADY_DB), hops less
# than ABOVE_NOISE_DB over the quietest of the last NOISE_FRAMES (minimum statistics) are
# silence too. Speech, or music under it, is never that steady: it is left to the other rules.
ABOVE_NOISE_DB = 12.0
NOISE_FRAMES = 45  # 1.5 s: speech leaves gaps between words well within it
STEADY_FRAMES, STEADY_DB = 5, 6.0
PAUSE_FROM, PAUSE_TO = 0.9, 1.0  # share of the recognizer's hops that are silent: the lips start to rest, and rest
# The lips press together where the opening model's likeliest closure inside the frame is over
# this: at 0.5, Flite's p/b/m (a synthesizer it never heard) stayed open in a fifth of their frames
# at 0.35-0.5; at 0.4 on folds of training speakers the engine's opening followed the real mouths
# better too (r 0.411 against 0.398), which a lower value no longer does (0.35: 0.402).
CLOSED_FROM = 0.4
LEAD_S, SPREAD_S = 0.02, 0.04  # the rules' kernel over hops: where the mouth listens most
PAST_HOPS, FUTURE_HOPS = -int(CONTEXT[0]), int(CONTEXT[-1])  # the recognizer's: 100 ms before the centre, 80 after
# Hops a frame reads: the recognizer's, and further back for the opening model's predictions.
_FIRST = -max(PAST_HOPS, opening.SMOOTH_PAST + opening.PAST)
_HOP_OFFSETS = np.arange(_FIRST, max(FUTURE_HOPS, opening.SMOOTH_FUTURE + opening.FUTURE) + 1)
_HEARD_SPAN = np.array([-PAST_HOPS - _FIRST, -PAST_HOPS - _FIRST + len(CONTEXT)])  # the recognizer's hops among them
# The opening model's inputs: for each hop from SMOOTH_PAST before the centre to SMOOTH_FUTURE
# after, the rows (indices into the frame's hops) from PAST before it to FUTURE after.
_OPENING_CENTRES = np.arange(-opening.SMOOTH_PAST, opening.SMOOTH_FUTURE + 1) - _FIRST
_OPENING_ROWS = _OPENING_CENTRES[:, None] + np.arange(-opening.PAST, opening.FUTURE + 1)[None, :]
_LOW, _F1, _F2 = (BAND0 + list(BANDS).index(band) for band in ("low", "f1", "f2"))
LOOKAHEAD_SAMPLES = 1280  # 80 ms after the frame's end: FUTURE_HOPS past its centre plus half a hop window
CONTEXT_SAMPLES = -_FIRST * HOP  # 160 ms before the frame's start (costs no latency)


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
def _decide(m, offsets, peak_db, noise_db, heard, at, keep, positions, values, mean, scale, weights, biases, o_mean, o_scale, o_weights, o_biases):  # type: ignore[no-untyped-def]
    """One frame from its hops' rows *m* at *offsets* (seconds from the frame's centre), in one
    call that does not hold the GIL: (viseme memberships, the opening model's strongest closure
    inside the frame, whether every hop the recognizer hears is silence or hum, the loudness
    tracker's new peak, how far the frame is from a pause (1: not at all), the opening model's z).
    *noise_db*: the room's level while it is steady, else -inf (:data:`NOISE_FRAMES`).
    *heard*: the recognizer's hops (start, stop); *at*, *keep*, *positions*, *values*: the
    opening model's hops, which of their predictions may be kept, and its cache
    (:func:`.opening.frame_opening`); then the recognizer's and the opening model's networks."""
    n = m.shape[0]
    half_frame = 0.5 / FPS
    loudest = -np.inf
    for i in range(n):
        if abs(offsets[i]) <= half_frame:
            loudest = max(loudest, m[i, LEVEL])
    peak = max(loudest, peak_db - PEAK_DECAY_DB_PER_FRAME, PEAK_FLOOR_DB)
    floor_db = max(GATE_DB, peak - FLOOR_BELOW_PEAK_DB, noise_db + ABOVE_NOISE_DB)
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
    memberships = np.empty((1, len(biases[-1])), np.float32)
    forward(inputs[heard[0] : heard[1]].reshape(1, -1), mean, scale, weights, biases, memberships)
    frame_m = (1.0 - silent) * memberships[0].astype(np.float64)
    frame_m[0] += silent
    inside = np.abs(offsets[_OPENING_CENTRES]) <= half_frame  # the opening model's hops in the frame's own 33 ms
    z, closed = frame_opening(inputs, _OPENING_ROWS, at, keep, inside, positions, values, o_mean, o_scale, o_weights, o_biases)
    pause = min(max((quiet[heard[0] : heard[1]].mean() - PAUSE_FROM) / (PAUSE_TO - PAUSE_FROM), 0.0), 1.0)
    all_quiet = (quiet[heard[0] : heard[1]] + hum[heard[0] : heard[1]]).min() > 0.98
    return frame_m, closed, all_quiet, peak, 1.0 - pause, z


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
        self._quietest: deque[float] = deque(maxlen=NOISE_FRAMES)  # each recent frame's quietest hop, dB
        self._hops = HopCache()
        self._predictions = PredictionCache()
        self._source: int | None = None  # the footage frame the last mouth came from

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
        engine = self.engine
        self._quietest.append(float(m[np.abs(offsets) <= 0.5 / FPS, LEVEL].min()))
        recent = list(itertools.islice(reversed(self._quietest), STEADY_FRAMES))
        steady = len(recent) == STEADY_FRAMES and max(recent) - min(recent) < STEADY_DB
        noise_db = min(self._quietest) if steady else -np.inf
        # The opening model's hops, and whether all they hear is real audio (then kept for the next frames).
        at = frame.start + centres[_OPENING_CENTRES]
        keep = centres[_OPENING_CENTRES + opening.FUTURE] + WIN // 2 <= frame.valid
        cache = self._predictions.for_epoch(frame.epoch)
        frame_m, closure, all_quiet, self.peak_db, away_from_pause, z = _decide(m, offsets, self.peak_db, noise_db, _HEARD_SPAN, at, keep, cache.positions, cache.values, *engine.recognizer.kernel_args, *engine.opening.kernel_args)
        if all_quiet:
            shape = MouthShape()
        else:
            # The recognizer says the shape; the opening model, which heard real people, how far
            # the lips part (its expectation: the opening z says, where they are not closed).
            params = frame_m @ _TARGET_MATRIX
            opened = away_from_pause * (1.0 - closure) * min(max(opening.BASE + opening.GAIN * z, 0.0), 1.0)
            shape = MouthShape(opened, float(params[1]), float(params[2]), float(params[3]))
        if closure > CLOSED_FROM:
            # Lips meet: no blur across a closure, but keep the spread/rounding it is coarticulated with.
            shape = MouthShape(0.0, shape.width * 0.5, shape.round * 0.5, 0.0)
        return FrameAnalysis(shape, VISEMES[int(np.argmax(frame_m))], float(closure))

    def mouth(self, frame: AudioFrame, ref: ReferenceFrame) -> MouthShape:
        return self.analyse(frame).shape

    def silent(self) -> bool:
        # An all-zero window is silence in every hop: the rules give the rest shape, whatever came
        # before (no smoothing state); only the loudness peak decays, as analyse() would do.
        self.peak_db = max(self.peak_db - PEAK_DECAY_DB_PER_FRAME, -35.0)
        self._quietest.append(-np.inf)
        return True

    def draw(self, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any = None) -> Region | None:
        assert isinstance(mouth, MouthShape)
        if ref.footage is None or ref.landmarks is None:
            return compose_region(ref, mouth)
        # A character made from video: the mouth is the person's own, from the frame of the
        # footage that fits (unit selection), warped the rest of the way if none is close.
        source = ref.footage
        choice = source.index.choose(mouth, ref.index, self._source)
        self._source = choice.frame
        if choice.frame == ref.index and choice.cost == 0.0:
            return None  # its own closed lips
        image, lm = source.frames[choice.frame], source.landmarks[choice.frame]
        if choice.mismatch > footage.CLOSE_ENOUGH:
            nearest = replace(ref, index=choice.frame, image=image, landmarks=lm, footage=None)
            image = apply_region(image, compose_region(nearest, mouth))
        return footage.compose(ref.image, ref.landmarks, image, lm, source.polygon(choice.frame))


class VisemeEngine(Engine):
    """``--engine viseme`` (the default): rules and the recognizer hear the viseme, the mesh warp draws it."""
    name = "viseme"
    lookahead_samples = LOOKAHEAD_SAMPLES
    context_samples = CONTEXT_SAMPLES

    def __init__(self, opening_model: OpeningModel | None = None) -> None:
        self.recognizer = VisemeRecognizer()
        self.opening = opening_model if opening_model is not None else OpeningModel()

    def stream(self) -> VisemeStream:
        return VisemeStream(self)

    def warm_up(self) -> None:
        features.warm_up()
        interior.warm_up()
        meshwarp.warm_up()
        # the front end and the frame's decision, compiled now (then from numba's cache)
        window = np.random.default_rng(0).integers(-3000, 3000, self.context_samples + 533 + self.lookahead_samples).astype(np.int16)
        self.stream().analyse(AudioFrame(0, window[:533].tobytes(), window, 0, len(window)))
