"""Shared fixtures: the bundled speech sample and a server on an ephemeral port."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from lipsync_stream.audio import load_audio
from lipsync_stream.characters.fetch import FetchConfig
from lipsync_stream.cli import sample_speech
from lipsync_stream.serve.runner import running_server
from lipsync_stream.serve.server import LipsyncServer
from lipsync_stream.serve.server_config import ServerConfig

T = TypeVar("T")


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """8.9 s of espeak-ng speech, int16 16 kHz mono, with half a second of silence at each end."""
    return load_audio(sample_speech())


@pytest.fixture
def asset_root(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    root.mkdir()
    return root


@pytest.fixture
async def server(asset_root: Path, tmp_path: Path) -> AsyncIterator[tuple[LipsyncServer, str]]:
    config = ServerConfig(port=0, asset_roots=[asset_root])
    config.fetch = FetchConfig(asset_roots=[asset_root], cache_dir=tmp_path / "cache")
    async with running_server(config) as pair:
        yield pair


def run_measured(code: str, timeout: float = 300.0) -> tuple[float, str]:
    """Run Python *code* in a fresh interpreter: (its peak RSS in MB, what it printed).

    Memory figures come from a process of their own, so nothing the test run did before counts
    (VmHWM, the peak of this process image: getrusage's ru_maxrss would carry over the parent's).
    """
    epilogue = "\nimport re\nprint('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    done = subprocess.run([sys.executable, "-c", code + epilogue], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    peak_kb = int(done.stdout.rsplit("PEAK_KB", 1)[1].split()[0])
    return peak_kb / 1024, done.stdout


async def collect_for(source: AsyncIterable[T], seconds: float) -> list[tuple[float, T]]:
    """What *source* yields within *seconds*, each item with its arrival (``time.monotonic()``)."""
    got: list[tuple[float, T]] = []

    async def read() -> None:
        async for item in source:
            got.append((time.monotonic(), item))

    reader = asyncio.create_task(read())
    await asyncio.sleep(seconds)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    return got


async def wait_until_idle(app: LipsyncServer, seconds: float) -> None:
    """Wait (up to *seconds*) until the server has no session open; asserts it got there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while app.active_sessions and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert app.active_sessions == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    """Until *url* (a server's /healthz) answers 200; fails after *timeout* seconds."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200")
