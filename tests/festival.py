"""A third speech synthesizer for the quality harness: Festival (Debian's ``festival``), in its
English voices Debian ships: two diphone voices (``kal_diphone``, ``ked_diphone``: Debian's
``festvox-kallpc16k`` and ``festvox-kdlpc16k``; ked is a voice neither espeak-ng nor Flite has)
and an HTS statistical voice built from a recording of a person (``cmu_us_slt_arctic_hts``:
``festvox-us-slt-hts``; HTS, where Flite's slt is a clustergen voice). Like Flite it does not say
when it speaks each phoneme: they are found by forced alignment (:class:`flite.ForcedAligner`).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from espeak import Phoneme, resample_to
from flite import ForcedAligner, read_wav

VOICES = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]
PACKAGES = {"kal_diphone": "festvox-kallpc16k", "ked_diphone": "festvox-kdlpc16k", "cmu_us_slt_arctic_hts": "festvox-us-slt-hts"}


class Festival:
    """``say(text, voice)`` -> (int16 PCM, sample rate, ARPAbet phonemes with times)."""

    def __init__(self) -> None:
        if shutil.which("text2wave") is None:
            raise RuntimeError("festival is not installed (Debian package festival, and its voices " + ", ".join(PACKAGES.values()) + ")")
        self._aligner = ForcedAligner()

    def say(self, text: str, voice: str = "ked_diphone") -> tuple[np.ndarray, int, list[Phoneme]]:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.wav"
            # text2wave exits 0 when the voice is missing: its error is only on stderr
            done = subprocess.run(["text2wave", "-eval", f"(voice_{voice})", "-o", str(path)], input=text.encode(), capture_output=True, check=False)
            if done.returncode != 0 or b"ERROR" in done.stderr or not path.is_file():
                raise RuntimeError(f"festival could not speak with the voice {voice} (Debian package {PACKAGES.get(voice, '?')}): {done.stderr.decode(errors='replace').strip()[:200]}")
            pcm, rate = read_wav(path)
        return pcm, rate, self._aligner.align(resample_to(pcm, rate, 16000), text)
