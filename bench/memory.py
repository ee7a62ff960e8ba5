"""Memory: resident memory per added session, and for N workers sharing characters.

Runs ``lipsync-stream serve`` in a subprocess and reads /proc. Sessions are held open with
``handleSilence`` (the server makes idle frames in real time), so each one has its engine state,
renderer and socket buffers live while memory is read. For workers, the figure is PSS (shared
pages counted once across processes), which is what N copies would cost the machine.

    .venv/bin/python bench/memory.py [--sessions 0 8 16 32] [--workers 1 2]

Goal: under 20 MB per added session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess, process_tree  # noqa: E402


def proc_kib(pid: int, field: str, file: str = "status") -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start(workers: int, cache: Path) -> tuple[ServerProcess, str]:
    server = ServerProcess(["--cache-dir", str(cache), "--workers", str(workers)])
    time.sleep(1.0 * workers)  # every worker up
    return server, server.url


async def hold(url: str, n: int, seconds: float) -> None:
    """n idle sessions open at once for *seconds*, reading their frames."""

    async def one() -> None:
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.send(json.dumps({"handleSilence": True}))
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await asyncio.wait_for(ws.recv(), 10)

    await asyncio.gather(*(one() for _ in range(n)))


async def measure_during(url: str, n: int, pid: int) -> float:
    task = asyncio.create_task(hold(url, n, 4.0))
    await asyncio.sleep(3.0)
    rss = sum(proc_kib(p, "VmRSS") for p in process_tree(pid)) / 1024
    await task
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[0, 8, 16, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(1, Path(tmp) / "cache")
        try:
            asyncio.run(hold(url, 1, 1.0))  # character loaded, engine warm
            print("| open sessions | server RSS (MB) | per added session (MB) |")
            print("|---:|---:|---:|")
            base = None
            for n in args.sessions:
                rss = asyncio.run(measure_during(url, n, proc.pid)) if n else sum(proc_kib(p, "VmRSS") for p in process_tree(proc.pid)) / 1024
                base = rss if base is None else base
                per = f"{(rss - base) / n:.1f}" if n and base is not None and n != args.sessions[0] else ""
                print(f"| {n} | {rss:.0f} | {per} |")
        finally:
            proc.close()
        print()
        print("| workers | total PSS (MB), each worker serving the default character |")
        print("|---:|---:|")
        for w in args.workers:
            proc, url = start(w, Path(tmp) / "cache")
            try:
                asyncio.run(hold(url, 4 * w, 2.0))  # connections spread over the workers
                pss = sum(proc_kib(p, "Pss", "smaps_rollup") for p in process_tree(proc.pid)) / 1024
                print(f"| {w} | {pss:.0f} |")
            finally:
                proc.close()


if __name__ == "__main__":
    main()
