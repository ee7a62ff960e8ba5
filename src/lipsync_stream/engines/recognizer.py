"""The viseme recognizer: a small neural network that hears which mouth shape a sound needs.

Hand-written rules on formant positions tell open from closed well but hear rounding (o, u, w)
and spreading (i, e) poorly. This network does: its input is the log-mel spectrum's shape (24
bands, the level subtracted), the level under the loudest recent speech and the voicing of the
19 hops (10 ms apart) from 100 ms before a frame's centre to 80 ms after it (within the viseme
engine's lookahead); two hidden layers (128 and 64 units); its output, memberships of the
engine's visemes. It was trained here on synthetic speech with exact phoneme timings (espeak-ng, many
voices and accents, none of the voices the quality harness scores), by ``tools/train_visemes.py``
(the data recipe and the training, so anyone can retrain), and ships as ``visemes.npz`` beside
this module. Running it is three small matrix products per frame, compiled (numba) so that it
does not hold the GIL.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
from numba import njit

from .features import LEVEL, MEL0, N_MEL, VOICING, Features

#: hop offsets, from the frame's centre hop, that the network hears
CONTEXT = np.arange(-10, 9)
PEAK_FLOOR_DB = -35.0  # the loudness tracker never sinks below this
LEVEL_RANGE_DB = 60.0
FEATURES_PER_HOP = N_MEL + 2
WEIGHTS = "visemes.npz"


def hop_inputs(f: Features, peak_db: np.ndarray | float) -> np.ndarray:
    """(hops, FEATURES_PER_HOP) float32: each hop's spectral shape (log-mel minus the level, in
    tens of dB), its level under *peak_db* (0 at the peak, -1 at LEVEL_RANGE_DB under) and its
    voicing."""
    m = f.matrix()
    out = np.empty((len(m), FEATURES_PER_HOP), np.float32)
    hop_inputs_into(m, np.broadcast_to(np.asarray(peak_db, np.float64), (len(m),)), out)
    return out


@njit(nogil=True, cache=True)
def hop_inputs_into(m, peak_db, out):  # type: ignore[no-untyped-def]
    """:func:`hop_inputs` from hop rows *m* (:func:`.features.hop_matrix`) into *out*."""
    for i in range(m.shape[0]):
        level = m[i, LEVEL]
        for k in range(N_MEL):
            out[i, k] = (m[i, MEL0 + k] - level) / 10.0
        out[i, N_MEL] = min(max((level - peak_db[i]) / LEVEL_RANGE_DB, -1.0), 0.0)
        out[i, N_MEL + 1] = m[i, VOICING]


def peak_track(level_db: np.ndarray, decay_per_hop: float = 0.01) -> np.ndarray:
    """The loudness tracker over consecutive hops, as the engine keeps it while it streams."""
    out = np.empty(len(level_db))
    peak = -20.0
    for i, level in enumerate(level_db):
        peak = max(float(level), peak - decay_per_hop, PEAK_FLOOR_DB)
        out[i] = peak
    return out


class VisemeRecognizer:
    """The trained network; :meth:`memberships` for one frame's context, rows summing to 1."""

    def __init__(self, path: Path | None = None) -> None:
        source = path if path is not None else Path(str(resources.files("lipsync_stream.engines") / WEIGHTS))
        with np.load(source, allow_pickle=False) as data:
            self.classes = [str(c) for c in data["classes"]]
            self.mean = data["mean"].astype(np.float32)
            self.scale = (1.0 / data["std"]).astype(np.float32)
            n_layers = int(data["layers"])
            self.layers = [(np.ascontiguousarray(data[f"w{i}"], np.float32), np.ascontiguousarray(data[f"b{i}"], np.float32)) for i in range(n_layers)]
            self.version = str(data["version"])
        if self.layers[0][0].shape[0] != len(CONTEXT) * FEATURES_PER_HOP or self.layers[-1][0].shape[1] != len(self.classes):
            raise ValueError(f"{source.name}: the network's {self.layers[0][0].shape[0]} inputs and {self.layers[-1][0].shape[1]} outputs do not fit {len(CONTEXT) * FEATURES_PER_HOP} features and {len(self.classes)} classes")

    def memberships(self, inputs: np.ndarray) -> np.ndarray:
        """(n, classes) for (n, len(CONTEXT) * FEATURES_PER_HOP) inputs (or one row)."""
        x = np.ascontiguousarray(np.atleast_2d(inputs), np.float32)
        out = np.empty((len(x), len(self.classes)), np.float32)
        forward(x, *self.kernel_args, out)
        return out

    @functools.cached_property
    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The network for :func:`forward`: mean, scale, the layers' weights and biases."""
        return self.mean, self.scale, tuple(w for w, _ in self.layers), tuple(b for _, b in self.layers)


@njit(nogil=True, cache=True)
def hidden_layers(h, weights, biases):  # type: ignore[no-untyped-def]
    """The layers on rows *h* (normalised inputs, float32): ReLU hidden layers, then the last
    layer's raw outputs (shared by the recognizer and :mod:`.opening`)."""
    last = len(weights) - 1
    for i in range(len(weights)):
        h = np.dot(h, weights[i]) + biases[i]
        if i < last:
            h = np.maximum(h, np.float32(0.0))
    return h


@njit(nogil=True, cache=True)
def forward(x, mean, scale, weights, biases, out):  # type: ignore[no-untyped-def]
    """The network on every row of *x* (float32), softmax memberships into *out*: normalised
    inputs, ReLU hidden layers, a softmax output layer."""
    h = hidden_layers((x - mean) * scale, weights, biases)
    for r in range(h.shape[0]):
        e = np.exp(h[r] - h[r].max())
        out[r] = e / e.sum()
