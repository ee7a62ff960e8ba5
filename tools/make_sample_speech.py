"""Synthesize the bundled sample sentence with espeak-ng (Debian package espeak-ng).

Writes src/lipsync_stream/assets/speech/hello.flac: 16 kHz mono PCM16, lossless. The demo and
the tests use it so that everything runs offline without a speech synthesizer installed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.audio import load_audio  # noqa: E402

TEXT = "Hello! I am a lip sync character. My mouth moves with every word you send me... and it rests when you stop."
OUT = Path(__file__).resolve().parents[1] / "src/lipsync_stream/assets/speech/hello.flac"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-p", "45", "-w", str(wav), TEXT], check=True)
        pcm = load_audio(wav)
    # half a second of silence on both ends: the mouth starts and ends closed
    pcm = np.concatenate([np.zeros(8000, np.int16), pcm, np.zeros(8000, np.int16)])
    with av.open(str(OUT), "w") as container:
        stream = container.add_stream("flac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = 0
        frame.time_base = Fraction(1, 16000)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    print(f"wrote {OUT} ({len(pcm) / 16000:.2f} s, {OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
