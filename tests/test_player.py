"""``lipsync-stream play`` in a real OpenCV window on a virtual display, with a null audio device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lipsync_stream.audio import save_wav
from lipsync_stream.client.player import NullAudioOut, PlayStats, _Ring

needs_xvfb = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Debian's xvfb (installed by .ci/run)")


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    number = 90 + os.getpid() % 100
    proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "800x600x24", "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.1)
    yield f":{number}"
    proc.terminate()
    proc.wait(5)


def play(display: str, args: list[str], tmp_path: Path, timeout: float = 90) -> tuple[subprocess.CompletedProcess[str], dict]:
    stats = tmp_path / "stats.json"
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    done = subprocess.run(
        [sys.executable, "-m", "lipsync_stream", "play", *args, "--no-sound", "--stats-json", str(stats), "--cache-dir", str(tmp_path / "c")],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    return done, (json.loads(stats.read_text()) if stats.exists() else {})


@needs_xvfb
def test_plays_every_frame_in_order_at_30_fps_in_sync(display: str, tmp_path: Path, speech: np.ndarray) -> None:
    save_wav(tmp_path / "in.wav", speech[: 16000 * 3])
    done, stats = play(display, [str(tmp_path / "in.wav")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stats["received"] == 90 and stats["order_ok"]
    assert stats["shown"] >= 80  # a frame may be skipped if the window was busy, never reordered
    assert 20 <= stats["fps"] <= 40  # the audio clock runs at real time: about 30
    assert stats["skew_ms_p50"] <= 34  # within one frame of its audio (the note gives the measured figures)
    assert stats["skew_ms_p95"] <= 50  # loose enough for a loaded CI machine


@needs_xvfb
def test_server_error_is_reported(display: str, tmp_path: Path, speech: np.ndarray) -> None:
    save_wav(tmp_path / "in.wav", speech[:8000])
    (tmp_path / "broken.mp4").write_bytes(b"not a video")  # exists, so only the server can refuse it
    done, stats = play(display, [str(tmp_path / "in.wav"), "--character", str(tmp_path / "broken.mp4")], tmp_path)
    assert done.returncode == 1 and "character_error" in stats["error"]


def test_ring_plays_silence_on_underrun_without_advancing_the_clock() -> None:
    ring = _Ring()
    ring.write(b"\x01\x00" * 10)
    out = ring.take(16)
    assert out == b"\x01\x00" * 10 + bytes(12) and ring.consumed == 10


def test_null_output_keeps_real_time() -> None:
    out = NullAudioOut()
    out.write(bytes(2 * 16000))
    out.start()
    time.sleep(0.3)
    played = out.played()
    out.close()
    assert 0.15 * 16000 < played < 0.6 * 16000


def test_stats_summary() -> None:
    s = PlayStats(received=3, shown=3, skews=[0.001, 0.002, 0.03], show_times=[0.0, 1 / 30, 2 / 30])
    summary = s.summary()
    assert round(summary["fps"]) == 30 and summary["skew_ms_max"] == pytest.approx(30.0)
