"""The opening model: how far a real speaker's lips part, heard from the recognizer's hop inputs.

The viseme recognizer (:mod:`.recognizer`) was trained on synthetic speech with exact phoneme
timings: it hears which shape a sound needs, but on recordings of real people its opening
followed their lips worse than plain loudness. This small network was trained on people: the
inner-lip opening that the face mesh measures on real talking-head clips (the training speakers
of ``bench/realspeech_corpus.tsv``), with espeak-ng speech mixed in, by ``tools/train_mouth.py``;
and, since eight minutes of video (the corpus then) hold few speakers, on an hour of 261 people reading aloud
without video (``bench/speech_audio.tsv``), each 10 ms labelled by a teacher: the phone that
pocketsphinx's recogniser (trained on many hours of people) hears there, and how far the video
speakers' mouths opened on that phone on average. The teacher runs only in training: at run time
this network hears the sound alone.
Its target is the opening *standardised per speaker* (``z``: 0 is this speaker's usual, 1 one
spread wider), since how wide a mouth opens is the face's, not the speech's; the engine maps
``z`` onto its own 0..1 scale with :data:`BASE` and :data:`GAIN`.

Each prediction hears :data:`PAST` hops before its hop and :data:`FUTURE` after (the same
per-hop inputs as the recognizer: 24-band spectral shape, level under the loudest recent speech,
voicing). A frame's opening is the mean of the predictions at the hops from :data:`SMOOTH_PAST`
before its centre to :data:`SMOOTH_FUTURE` after: a real mouth moves smoothly, and averaging
neighbouring predictions follows it better than any one of them (folds of training speakers
left out: r 0.40 for one prediction a frame, 0.45 for the mean; ``tools/train_mouth.py``). The
window is centred on the frame: from 6 hops before to 3 after, the mouth came half a frame late
(the engine's opening on those folds: best lag +0.55 frames on average, r 0.411, within a frame
of the real mouth's on 72 % of clips; centred: +0.38, 0.417, 76 %).
Everything it hears lies within the viseme engine's lookahead: it costs no latency. Consecutive
frames share most of those hops: each prediction is computed once and kept by its hop's
position in the stream (:class:`PredictionCache`), compiled, without the GIL.

A second output says whether the lips are pressed together (a logit): trained on the real
speakers' closed mouths (the face mesh's inner lips under :data:`CLOSED_BELOW` eye-corner
distances apart) and on the synthetic speech's silences and p/b/m. The recognizer, which heard
only a synthesizer, said "closed" in 19 % of real speakers' frames, where their lips were closed
in 40 % of those; a mouth pressed shut where a real one is parted is what a viewer sees first.
The two outputs come from two towers side by side in one network (block-diagonal layers): the
teacher's recordings shaped z only, the closed lips were learnt as before.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
from numba import njit

from .features import HOP
from .recognizer import FEATURES_PER_HOP, hidden_layers

PAST, FUTURE = 10, 5  # hops one prediction hears before and after its own
SMOOTH_PAST, SMOOTH_FUTURE = 3, 3  # hops around a frame's centre whose predictions are averaged
BASE, GAIN = 0.35, 0.25  # the engine's opening for z = 0, and per unit of z
CLOSED_BELOW = 0.02  # a real mouth is closed when its inner lips are less than this apart (eye-corner distances)
OUTPUTS = 2  # z, and the logit of the lips being closed
WEIGHTS = "opening.npz"
INPUTS = (PAST + 1 + FUTURE) * FEATURES_PER_HOP


class OpeningModel:
    """The trained network; :meth:`predict` for rows of one prediction's inputs."""

    version: str

    def __init__(self, path: Path | None = None) -> None:
        source = path if path is not None else Path(str(resources.files("lipsync_stream.engines") / WEIGHTS))
        with np.load(source, allow_pickle=False) as data:
            geometry = tuple(int(v) for v in data["geometry"])
            self.mean = data["mean"].astype(np.float32)
            self.scale = (1.0 / data["std"]).astype(np.float32)
            n_layers = int(data["layers"])
            self.layers = [(np.ascontiguousarray(data[f"w{i}"], np.float32), np.ascontiguousarray(data[f"b{i}"], np.float32)) for i in range(n_layers)]
            self.version = str(data["version"])
        if geometry != (PAST, FUTURE, FEATURES_PER_HOP) or self.layers[0][0].shape[0] != INPUTS or self.layers[-1][0].shape[1] != OUTPUTS:
            raise ValueError(f"{source.name}: a network for {geometry} (hops before, after, features per hop) with {self.layers[0][0].shape[0]} inputs and {self.layers[-1][0].shape[1]} outputs does not fit this engine's {(PAST, FUTURE, FEATURES_PER_HOP)} with {OUTPUTS} (z, closed)")

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """(n, 2) for (n, INPUTS) inputs: z, and the logit of the lips being closed."""
        x = np.ascontiguousarray(np.atleast_2d(inputs), np.float32)
        return _each(x, *self.kernel_args)

    @functools.cached_property
    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The network for :func:`smoothed_z`: mean, scale, the layers' weights and biases."""
        return self.mean, self.scale, tuple(w for w, _ in self.layers), tuple(b for _, b in self.layers)


@njit(nogil=True, cache=True)
def _each(x, mean, scale, weights, biases):  # type: ignore[no-untyped-def]
    return hidden_layers((x - mean) * scale, weights, biases)


class PredictionCache:
    """One stream's predictions by hop position, so that consecutive frames, whose smoothing
    windows overlap, compute each once. A prediction is kept only when every hop it hears lies
    wholly in real audio; the cache is cleared when SKIP moves the stream (a new epoch)."""

    SLOTS = 32  # a frame averages SMOOTH_PAST + SMOOTH_FUTURE + 1 predictions; the next one moves 3.3 hops

    def __init__(self) -> None:
        self.positions = np.full(self.SLOTS, np.iinfo(np.int64).min, np.int64)
        self.values = np.zeros((self.SLOTS, OUTPUTS))
        self.epoch = 0

    def for_epoch(self, epoch: int) -> PredictionCache:
        if epoch != self.epoch:
            self.positions[:] = np.iinfo(np.int64).min
            self.epoch = epoch
        return self


@njit(nogil=True, cache=True)
def frame_opening(inputs, rows, at, keep, inside, positions, values, mean, scale, weights, biases):  # type: ignore[no-untyped-def]
    """(z, closed) for one frame: the mean z of the predictions at hops *at* (stream positions),
    the j-th from the hop rows ``inputs[rows[j]]``, and the likeliest closure among those
    *inside* the frame's own 33 ms. Each prediction comes from the cache (*positions*,
    *values*: a hop at stream position p sits in slot p // HOP mod SLOTS) or is computed, and
    kept where *keep*."""
    total = 0.0
    closed = -np.inf  # the largest logit inside the frame
    n_slots = len(positions)
    for j in range(rows.shape[0]):
        slot = (at[j] // HOP) % n_slots
        if positions[slot] == at[j]:
            z, logit = values[slot, 0], values[slot, 1]
        else:
            out = hidden_layers((inputs[rows[j]].reshape(1, -1) - mean) * scale, weights, biases)
            z, logit = float(out[0, 0]), float(out[0, 1])
            if keep[j]:
                positions[slot], values[slot, 0], values[slot, 1] = at[j], z, logit
        total += z
        if inside[j]:
            closed = max(closed, logit)
    return total / rows.shape[0], 1.0 / (1.0 + np.exp(-closed))
