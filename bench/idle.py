"""Idle sessions: N clients with ``handleSilence`` that send no audio, each getting 30 fps.

Runs ``lipsync-stream serve`` in a subprocess; N sessions on the default character each read
idle frames for a while. After a warm-up, it measures the frames each session receives per
second (the slowest session and the mean) and the server's CPU use (from /proc), so the cost of
an idle frame can be set against the real-time budget.

    .venv/bin/python bench/idle.py [--sessions 10 40] [--seconds 6]

Goal (issue 8): 40 idle sessions at a full 30 fps on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess, process_tree  # noqa: E402
from throughput import cpu_seconds  # noqa: E402

WARMUP = 2.0


async def idle_session(url: str, seconds: float, counts: list[int]) -> None:
    """Read idle frames for *seconds*; counts[0] frames during the warm-up, counts[1] after."""
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"handleSilence": True}))
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            message = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(message, str):
                raise RuntimeError(message)
            counts[0 if now < start + WARMUP else 1] += 1


async def run(url: str, n: int, seconds: float, pids: list[int]) -> tuple[float, float, float]:
    counts = [[0, 0] for _ in range(n)]
    tasks = [asyncio.create_task(idle_session(url, seconds, c)) for c in counts]
    await asyncio.sleep(WARMUP)
    cpu0, t0 = cpu_seconds(pids), time.perf_counter()
    await asyncio.gather(*tasks)
    cpu, wall = cpu_seconds(pids) - cpu0, time.perf_counter() - t0
    rates = [c[1] / (seconds - WARMUP) for c in counts]
    return min(rates), sum(rates) / n, cpu / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    serve_help = subprocess.run([sys.executable, "-m", "lipsync_stream", "serve", "--help"], capture_output=True, text=True, check=True).stdout
    extra = ["--max-sessions", str(max(args.sessions))] if "--max-sessions" in serve_help else []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(["--cache-dir", str(Path(tmp) / "cache"), "--workers", "1", *extra])  # one process
        try:
            pids = process_tree(server.pid)
            asyncio.run(run(server.url, 1, WARMUP + 1.0, pids))  # character loaded, rest pictures drawn
            print(f"{os.cpu_count()} CPUs; each session reads idle frames for {args.seconds:g} s, measured after {WARMUP:g} s")
            print()
            print("| idle sessions | slowest session (fps) | mean (fps) | server CPU (cores) | CPU per idle frame (ms) |")
            print("|---:|---:|---:|---:|---:|")
            for n in args.sessions:
                slowest, mean, cores = asyncio.run(run(server.url, n, args.seconds, pids))
                print(f"| {n} | {slowest:.1f} | {mean:.1f} | {cores:.2f} | {1000 * cores / (mean * n):.3f} |")
        finally:
            server.close()


if __name__ == "__main__":
    main()
