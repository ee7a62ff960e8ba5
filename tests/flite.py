"""A second speech synthesizer for tests, the quality harness and training: Flite (Debian package
``flite``), whose voices (``kal``, ``kal16``: diphone; ``awb``, ``rms``, ``slt``: statistical
voices built from CMU ARCTIC recordings of people) sound nothing like espeak-ng's formant
synthesis. Flite does not report when it speaks each phoneme, so the phonemes are found by
forced alignment with pocketsphinx (its wheel ships an en-us acoustic model trained on human
speech, and the CMU pronouncing dictionary), in ARPAbet, 10 ms apart.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from espeak import Phoneme, resample_to, viseme_table

VOICES = ["kal", "kal16", "awb", "rms", "slt"]

#: ARPAbet (pocketsphinx's phones) -> the engine's visemes
ARPABET_VISEME = viseme_table({
    "closed": "P B M",
    "fv": "F V",
    "a": "AA AE AW AY",
    "e": "EH EY ER AH",
    "i": "IY IH Y",
    "o": "OW OY UW UH W AO",
    "sil": "SIL",
})


class ForcedAligner:
    """The phonemes of a known text in a recording, by pocketsphinx's forced alignment: for a
    synthesizer that does not say when it speaks each one."""

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise RuntimeError("pocketsphinx is not installed (pip install pocketsphinx)") from exc
        self._decoder = Decoder(samprate=16000, bestpath=False, loglevel="FATAL")

    def align(self, pcm16k: np.ndarray, text: str) -> list[Phoneme]:
        """The phonemes of *text* in *pcm16k* (int16 16 kHz), by forced alignment."""
        words = re.sub(r"[^a-z' ]", " ", text.lower()).split()
        d = self._decoder
        d.set_align_text(" ".join(words))
        d.start_utt()
        d.process_raw(pcm16k.tobytes(), full_utt=True)
        d.end_utt()
        d.set_alignment()
        d.start_utt()
        d.process_raw(pcm16k.tobytes(), full_utt=True)
        d.end_utt()
        out = []
        for word in d.get_alignment():
            for phone in word:
                out.append(Phoneme(phone.name, phone.start / 100.0, (phone.start + phone.duration) / 100.0))
        return out


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(int16 mono PCM, sample rate) of a synthesizer's WAV file."""
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).copy(), w.getframerate()


class Flite:
    """``say(text, voice)`` -> (int16 PCM, sample rate, ARPAbet phonemes with times)."""

    def __init__(self) -> None:
        if shutil.which("flite") is None:
            raise RuntimeError("flite is not installed (Debian package flite)")
        self._aligner = ForcedAligner()

    def say(self, text: str, voice: str = "kal16", stretch: float = 1.0, f0: float | None = None) -> tuple[np.ndarray, int, list[Phoneme]]:
        """*stretch*: durations times this (slower above 1); *f0*: the mean pitch, Hz."""
        settings = ["--setf", f"duration_stretch={stretch}"] + (["--setf", f"int_f0_target_mean={f0}"] if f0 else [])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.wav"
            subprocess.run(["flite", "-voice", voice, *settings, "-t", text, "-o", str(path)], check=True, capture_output=True)
            pcm, rate = read_wav(path)
        return pcm, rate, self._aligner.align(resample_to(pcm, rate, 16000), text)
