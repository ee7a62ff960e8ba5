"""The viseme recognizer: a small neural network that hears which mouth shape a sound needs.

Hand-written rules on formant positions tell open from closed well but hear rounding (o, u, w)
and spreading (i, e) poorly. This network does: its input is the log-mel spectrum's shape (24
bands, the level subtracted), the level under the loudest recent speech and the voicing of the
19 hops (10 ms apart) from 100 ms before a frame's centre to 80 ms after it (within the viseme
engine's lookahead); two hidden layers (128 and 64 units); its output, memberships of the
engine's visemes. It was trained here on synthetic speech with exact phoneme timings (espeak-ng, many
voices and accents, none of the voices the quality harness scores), by ``tools/train_visemes.py``
(the data recipe and the training, so anyone can retrain), and ships as ``visemes.npz`` beside
this module. Running it is three small matrix products per frame, in numpy.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .features import N_MEL, Features

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
    level = np.asarray(f.level_db, np.float64)
    shape = (np.asarray(f.mel_db, np.float64) - level[:, None]) / 10.0
    relative = np.clip((level - peak_db) / LEVEL_RANGE_DB, -1.0, 0.0)
    return np.concatenate([shape, relative[:, None], np.asarray(f.voicing, np.float64)[:, None]], axis=1).astype(np.float32)


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
            self.layers = [(data[f"w{i}"].astype(np.float32), data[f"b{i}"].astype(np.float32)) for i in range(n_layers)]
            self.version = str(data["version"])
        if self.layers[0][0].shape[0] != len(CONTEXT) * FEATURES_PER_HOP or self.layers[-1][0].shape[1] != len(self.classes):
            raise ValueError(f"{source.name}: the network's {self.layers[0][0].shape[0]} inputs and {self.layers[-1][0].shape[1]} outputs do not fit {len(CONTEXT) * FEATURES_PER_HOP} features and {len(self.classes)} classes")

    def memberships(self, inputs: np.ndarray) -> np.ndarray:
        """(n, classes) for (n, len(CONTEXT) * FEATURES_PER_HOP) inputs (or one row)."""
        x = (np.atleast_2d(inputs) - self.mean) * self.scale
        for w, b in self.layers[:-1]:
            x = np.maximum(x @ w + b, 0.0)
        w, b = self.layers[-1]
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)
