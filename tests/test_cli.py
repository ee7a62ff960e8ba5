"""``lipsync-stream render``/``demo``: an MP4 whose video and audio match the input."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import free_port, wait_healthy

from lipsync_stream.audio import save_wav
from lipsync_stream.characters.character import default_character_files
from lipsync_stream.cli import build_parser, main


def probe(path: Path) -> dict[str, float]:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames, samples = [], 0
        for f in c.decode(v, a):
            if isinstance(f, av.VideoFrame):
                frames.append(f.to_ndarray(format="bgr24"))
            else:
                samples += f.samples
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert (v.width, v.height) == (512, 512)
        return {"frames": len(frames), "video_s": len(frames) / float(v.average_rate), "audio_s": samples / a.rate, "first": frames[0], "all": frames}  # type: ignore[dict-item]


def test_render_writes_matching_h264_aac(tmp_path: Path, speech: np.ndarray) -> None:
    pcm = speech[: int(16000 * 2.5)]
    save_wav(tmp_path / "in.wav", pcm)
    assert main(["render", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out.mp4"), "--cache-dir", str(tmp_path / "c")]) == 0
    info = probe(tmp_path / "out.mp4")
    assert info["frames"] == 75
    assert abs(info["video_s"] - 2.5) < 1 / 30 + 1e-6
    assert abs(info["audio_s"] - 2.5) < 0.07  # AAC pads to whole 64 ms packets at most


def test_render_with_a_local_character_file(tmp_path: Path, speech: np.ndarray) -> None:
    video, _ = default_character_files()
    shutil.copy(video, tmp_path / "me.mp4")
    save_wav(tmp_path / "in.wav", speech[:8000])
    out = tmp_path / "out.mp4"
    assert main(["render", str(tmp_path / "in.wav"), "-o", str(out), "--character", str(tmp_path / "me.mp4"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert probe(out)["frames"] == 15


def test_render_errors_exit_nonzero(tmp_path: Path, speech: np.ndarray) -> None:
    assert main(["render", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.mp4")]) == 2
    save_wav(tmp_path / "in.wav", speech[:8000])
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert main(["render", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.mp4"), "--character", str(tmp_path / "broken.mp4"), "--cache-dir", str(tmp_path / "c")]) == 1
    assert not (tmp_path / "o.mp4").exists()  # no half-written video left behind


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--character", "/nonexistent/me.mp4"], "--character /nonexistent/me.mp4: no such file"),
        (["--faces", "/tmp/f.pkl"], "--faces describes the faces of a video: give that video with --character"),
        (["-o", "/nonexistent-dir/out.mp4"], "cannot write /nonexistent-dir/out.mp4: the folder /nonexistent-dir does not exist"),
    ],
)
def test_command_line_mistakes_name_the_problem(tmp_path: Path, speech: np.ndarray, caplog: pytest.LogCaptureFixture, extra: list[str], message: str) -> None:
    save_wav(tmp_path / "in.wav", speech[:8000])
    args = ["render", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.mp4"), "--cache-dir", str(tmp_path / "c")]
    assert main(args + extra) == 2
    assert any(message in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_demo_mouth_moves_with_the_bundled_sentence(tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    assert main(["demo", "-o", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    info = probe(out)
    frames = info["all"]
    assert abs(info["video_s"] - info["audio_s"]) < 0.1
    mouth = np.array([f[280:370, 200:310].astype(float).mean() for f in frames])
    assert mouth.max() - mouth.min() > 10  # it opens and closes


def test_serve_help_lists_the_options() -> None:
    text = build_parser().format_help()
    assert "serve" in text and "render" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "x"])


def test_render_of_a_file_longer_than_the_old_120_s_limit(tmp_path: Path, speech: np.ndarray) -> None:
    pcm = np.zeros(125 * 16000, np.int16)  # speech every 30 s, silence between
    for start in range(0, len(pcm) - len(speech), 30 * 16000):
        pcm[start : start + len(speech)] = speech
    save_wav(tmp_path / "long.wav", pcm)
    assert main(["render", str(tmp_path / "long.wav"), "-o", str(tmp_path / "long.mp4"), "--cache-dir", str(tmp_path / "c")]) == 0
    with av.open(str(tmp_path / "long.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = samples = 0
        for packet in c.demux(v, a):  # counted, not kept: 3 750 frames
            if packet.stream is v and packet.size:
                frames += 1
            elif packet.stream is a:
                samples += sum(f.samples for f in packet.decode())
    assert frames == 3750
    assert abs(samples / a.rate - 125.0) < 0.07


def test_serve_runs_one_worker_per_four_cores_by_default_and_one_for_learned_engines(tmp_path: Path, speech: np.ndarray) -> None:
    import subprocess
    import sys

    from lipsync_stream.cli import default_workers
    from lipsync_stream.client import stream_audio
    from lipsync_stream.cpus import cpus
    from lipsync_stream.wire.protocol import SessionParams, frames_for_samples

    assert default_workers("wav2lip") == 1
    assert default_workers("viseme") == max(1, min(4, cpus() // 4))
    port = free_port()
    cmd = [sys.executable, "-m", "lipsync_stream", "serve", "--port", str(port), "--cache-dir", str(tmp_path / "c")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")

        async def session() -> int:
            return len([f async for f in stream_audio(f"ws://127.0.0.1:{port}/LipsyncStream", speech[:8000], SessionParams(realtime=False))])

        import asyncio

        assert asyncio.run(session()) == frames_for_samples(8000)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    if default_workers("viseme") > 1:
        assert f"started {default_workers('viseme')} workers on port {port}" in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_says_so_in_one_line(workers: str, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--workers", workers]) == 2
    assert any(f"cannot listen on 127.0.0.1 port {port}" in r.getMessage() and "in use" in r.getMessage() for r in caplog.records)


def test_every_option_of_every_command_is_documented() -> None:
    import argparse

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text() + (root / "docs" / "usage.md").read_text()

    def options(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, str]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert sub.description, f"`{' '.join([*path, name])} --help` says nothing about what it does"
                    found += options(sub, [*path, name])
            else:
                found += [(" ".join(path), o) for o in action.option_strings if o.startswith("--") and o != "--help"]
        return found

    missing = sorted({f"{cmd} {opt}".strip() for cmd, opt in options(build_parser(), []) if opt not in readme})
    assert not missing, f"options neither the README nor docs/usage.md mentions: {missing}"


def test_version_and_log_level_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    from lipsync_stream import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lipsync-stream {__version__}"
    assert build_parser().parse_args(["serve", "--log-level", "WARNING"]).log_level == "WARNING"
    assert build_parser().parse_args(["--log-level", "ERROR", "serve"]).log_level == "ERROR"
    assert build_parser().parse_args(["serve"]).log_level == "INFO"


def test_sigterm_drains_every_worker_then_closes_running_sessions_with_going_away(tmp_path: Path, speech: np.ndarray) -> None:
    import asyncio
    import json
    import signal
    import subprocess
    import sys
    import time

    from websockets.asyncio.client import connect

    port = free_port()
    cmd = [sys.executable, "-m", "lipsync_stream", "serve", "--port", str(port), "--workers", "2", "--drain-timeout", "1", "--cache-dir", str(tmp_path / "c")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")

        async def session() -> tuple[str, int | None, float]:
            async with connect(f"ws://127.0.0.1:{port}/LipsyncStream") as ws:
                await ws.send(json.dumps({"realtime": True}))
                await ws.send(speech[:16000].tobytes())
                await ws.recv()  # the session runs
                proc.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                texts = [m async for m in ws if isinstance(m, str)]
                return texts[-1], ws.close_code, time.monotonic() - sent

        last, code, waited = asyncio.run(session())
        assert json.loads(last)["error"] == "going_away" and code == 1001
        assert 0.8 < waited < 8  # it had its drain time, not more
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)
