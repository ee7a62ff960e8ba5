"""A ``lipsync-stream serve`` subprocess on a free port, for the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Starts the server with *args* after ``serve --port P`` and waits until it accepts."""

    def __init__(self, args: list[str], timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/LipsyncStream"
        cmd = [sys.executable, "-m", "lipsync_stream", "--log-level", "WARNING", "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("the server did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def process_tree(pid: int) -> list[int]:
    """*pid* and all its descendants (the workers of ``--workers``)."""
    out = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += process_tree(int(child))
    return out
