"""Long audio in one go: ``lipsync-stream render`` of a 30-minute file against a server process.

Makes a 30-minute speech file (the bundled sentence with pauses of 1 to 3 s, so that the mouth
works all along), starts ``lipsync-stream serve`` in a subprocess and runs ``lipsync-stream render
--server`` on it, sampling the server's RSS every second. Prints the frames per second of the
whole render and the server's RSS over time: flat means memory does not grow with the length.

    .venv/bin/python bench/long_render.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import proc_kib  # noqa: E402
from serverproc import ServerProcess, process_tree  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.audio import load_audio, save_wav  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402


def make_speech(path: Path, minutes: float) -> float:
    sentence = load_audio(sample_speech())
    rng = np.random.default_rng(0)
    parts, n = [], 0
    while n < minutes * 60 * 16000:
        pause = np.zeros(int(rng.uniform(1.0, 3.0) * 16000), np.int16)
        parts += [sentence, pause]
        n += len(sentence) + len(pause)
    pcm = np.concatenate(parts)[: int(minutes * 60 * 16000)]
    save_wav(path, pcm)
    return len(pcm) / 16000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "long.wav"
        seconds = make_speech(audio, args.minutes)
        server = ServerProcess(["--cache-dir", str(Path(tmp) / "cache"), "--workers", "1"])  # one process: its RSS
        samples: list[tuple[float, float]] = []
        try:
            cmd = [sys.executable, "-m", "lipsync_stream", "--log-level", "WARNING", "render", str(audio), "-o", str(Path(tmp) / "out.mp4"), "--server", server.url]
            started = time.perf_counter()
            render = subprocess.Popen(cmd)
            while render.poll() is None:
                rss = sum(proc_kib(p, "VmRSS") for p in process_tree(server.pid)) / 1024
                samples.append((time.perf_counter() - started, rss))
                time.sleep(1.0)
            wall = time.perf_counter() - started
            if render.returncode:
                raise SystemExit(f"render failed with exit code {render.returncode}")
        finally:
            server.close()
    frames = round(seconds * 30)
    print(f"{seconds / 60:.0f} min of audio = {frames} frames, rendered to an MP4 in {wall:.0f} s: {frames / wall:.0f} fps ({seconds / wall:.1f}x real time), client and server on the same machine")
    print()
    print("| into the render | server RSS (MB) |")
    print("|---:|---:|")
    step = max(1, len(samples) // 10)
    for t, rss in samples[::step] + [samples[-1]]:
        print(f"| {t:.0f} s | {rss:.0f} |")
    print(f"\nserver RSS: min {min(r for _, r in samples):.0f} MB, max {max(r for _, r in samples):.0f} MB over {len(samples)} samples")


if __name__ == "__main__":
    main()
