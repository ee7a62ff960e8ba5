"""The weight-free first engine: loudness and spectrum drive the mouth.

Per frame, one 64 ms analysis window centred on the frame's end (so the mouth leads the sound by
half a frame) gives the level in dBFS and the energy in four bands. Loudness above an adaptive
floor opens the mouth; energy in the first-formant band opens it further, hiss (s, f) narrows it,
second-formant energy spreads the lips (i, e) and its absence rounds them (o, u). Opening is fast,
closing a little slower, and silence below an absolute gate closes the lips completely.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..wire.protocol import SAMPLE_RATE, AudioFrame
from . import interior
from .base import Engine, EngineStream, LearnedMouth, MouthShape, ReferenceFrame, Region
from .mouthwarp import compose_mouth

FFT_SIZE = 1024
GATE_DB = -52.0  # below this the mouth is closed whatever the adaptive floor says
DYNAMIC_RANGE_DB = 26.0  # dB above the floor for a fully open mouth
FLOOR_BELOW_PEAK_DB = 32.0
PEAK_DECAY_DB_PER_FRAME = 0.05
ATTACK, RELEASE, WIDTH_RATE = 0.65, 0.45, 0.4

_HANN = np.hanning(FFT_SIZE).astype(np.float32)
_FREQS = np.fft.rfftfreq(FFT_SIZE, 1.0 / SAMPLE_RATE)
_BANDS = {
    "low": (_FREQS >= 250) & (_FREQS < 1000),  # first formant: how open
    "mid": (_FREQS >= 1000) & (_FREQS < 2500),  # second formant: front vowels spread the lips
    "high": (_FREQS >= 2500) & (_FREQS < 4500),
    "hiss": (_FREQS >= 4500),  # fricatives: teeth close together
}


def analyse(window: np.ndarray, frame_len: int) -> tuple[float, dict[str, float]]:
    """Level (dBFS) and band energies of the 1024 samples centred on the frame's end."""
    end = min(len(window), frame_len + FFT_SIZE // 2)
    seg = window[max(0, end - FFT_SIZE) : end].astype(np.float32) / 32768.0
    if len(seg) < FFT_SIZE:
        seg = np.pad(seg, (FFT_SIZE - len(seg), 0))
    rms = float(np.sqrt(np.mean(seg * seg)))
    level_db = 20.0 * np.log10(rms + 1e-9)
    power = np.abs(np.fft.rfft(seg * _HANN)) ** 2
    bands = {name: float(power[mask].sum()) for name, mask in _BANDS.items()}
    return level_db, bands


class EnergyStream(EngineStream):
    """One session's loudness tracker and smoothed mouth."""
    def __init__(self, engine: EnergyEngine) -> None:
        self._engine = engine
        self._peak_db = -20.0
        self._open = 0.0
        self._width = 0.0

    def mouth(self, frame: AudioFrame, ref: ReferenceFrame) -> MouthShape:
        window = frame.window
        frame_len = len(window) - self._engine.lookahead_samples - self._engine.context_samples
        level_db, bands = analyse(window, frame_len)
        self._peak_db = max(level_db, self._peak_db - PEAK_DECAY_DB_PER_FRAME, -30.0)
        floor_db = max(self._peak_db - FLOOR_BELOW_PEAK_DB, GATE_DB)
        if level_db < GATE_DB:
            open_target, width_target = 0.0, 0.0
        else:
            level = float(np.clip((level_db - floor_db) / DYNAMIC_RANGE_DB, 0.0, 1.0))
            total = sum(bands.values()) + 1e-12
            voiced = bands["low"] / total
            hiss = bands["hiss"] / total
            open_target = level * float(np.clip(0.35 + 0.9 * voiced - 0.6 * hiss, 0.1, 1.0))
            front = (bands["mid"] + bands["high"]) / (bands["low"] + bands["mid"] + bands["high"] + 1e-12)
            width_target = float(np.clip(3.0 * (front - 0.3), -1.0, 1.0)) * min(1.0, 2.0 * level)
        rate = ATTACK if open_target > self._open else RELEASE
        self._open += rate * (open_target - self._open)
        self._width += WIDTH_RATE * (width_target - self._width)
        if self._open < 0.01 and open_target == 0.0:
            self._open = 0.0
        if abs(self._width) < 0.01 and width_target == 0.0:
            self._width = 0.0
        return MouthShape(open=self._open, width=self._width)

    def silent(self) -> bool:
        # Silence keeps a closed mouth closed (below the gate, both targets are 0).
        if self._open or self._width:
            return False
        self._peak_db = max(self._peak_db - PEAK_DECAY_DB_PER_FRAME, -30.0)
        return True

    def draw(self, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any = None) -> Region | None:
        assert isinstance(mouth, MouthShape)
        return compose_mouth(ref, mouth)


class EnergyEngine(Engine):
    """``--engine energy``: loudness and four band energies open the mouth; needs no landmarks."""
    name = "energy"
    lookahead_samples = 534  # one frame: the analysis window reaches half a window past the frame
    context_samples = 0
    sessions_per_core = 12

    def stream(self) -> EnergyStream:
        return EnergyStream(self)

    def warm_up(self) -> None:
        interior.warm_up()
