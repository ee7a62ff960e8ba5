"""Memory: resident memory per added session, and for N workers sharing characters.

Runs ``lipsync-stream serve`` in a subprocess and reads /proc. Sessions are held open with
``handleSilence`` (the server makes idle frames in real time), so each one has its engine state,
renderer and socket buffers live while memory is read. For workers, the figure is PSS (shared
pages counted once across processes), which is what N copies would cost the machine.

    .venv/bin/python bench/memory.py [--sessions 0 8 16 32] [--workers 1 2]
        [--asset-root DIR --character NAME/NAME.mp4] [--speak]

``--speak``: each session also streams the bundled sentence in real time while it is held, so
its mouth is being made (a character from video: from its own frames) while memory is read.

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

from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402


def proc_kib(pid: int, field: str, file: str = "status") -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start(workers: int, cache: Path, asset_root: str | None = None) -> tuple[ServerProcess, str]:
    server = ServerProcess(["--cache-dir", str(cache), "--workers", str(workers), *(["--asset-root", asset_root] if asset_root else [])])
    time.sleep(1.0 * workers)  # every worker up
    return server, server.url


async def hold(url: str, n: int, seconds: float, character: str = "default", speech: bytes = b"") -> None:
    """n sessions open at once for *seconds*, reading their frames: idle, or saying *speech*."""

    async def one() -> None:
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.send(json.dumps({"handleSilence": True, "video_reference_url": character}))
            if speech:
                await ws.send(speech)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, str) and message.startswith("{"):
                    raise RuntimeError(message)

    await asyncio.gather(*(one() for _ in range(n)))


async def measure_during(url: str, n: int, pid: int, character: str, speech: bytes) -> float:
    task = asyncio.create_task(hold(url, n, 4.0, character, speech))
    await asyncio.sleep(3.0)
    rss = sum(proc_kib(p, "VmRSS") for p in process_tree(pid)) / 1024
    await task
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[0, 8, 16, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--character", default="default", help="the character to ask for, e.g. NAME/NAME.mp4 of a prepared video under --asset-root")
    parser.add_argument("--asset-root", help="serve --asset-root DIR")
    parser.add_argument("--speak", action="store_true", help="each session streams the bundled sentence while held")
    args = parser.parse_args()
    speech = load_audio(sample_speech()).astype("<i2").tobytes() if args.speak else b""
    print(f"character {args.character}; sessions {'speaking' if args.speak else 'idle'}\n")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(1, Path(tmp) / "cache", args.asset_root)
        try:
            asyncio.run(hold(url, 1, 1.0, args.character, speech))  # character loaded, engine warm
            print("| open sessions | server RSS (MB) | per added session (MB) |")
            print("|---:|---:|---:|")
            base = None
            for n in args.sessions:
                rss = asyncio.run(measure_during(url, n, proc.pid, args.character, speech)) if n else sum(proc_kib(p, "VmRSS") for p in process_tree(proc.pid)) / 1024
                base = rss if base is None else base
                per = f"{(rss - base) / n:.1f}" if n and base is not None and n != args.sessions[0] else ""
                print(f"| {n} | {rss:.0f} | {per} |")
        finally:
            proc.close()
        print()
        print(f"| workers | total PSS (MB), each worker serving {args.character} |")
        print("|---:|---:|")
        for w in args.workers:
            proc, url = start(w, Path(tmp) / "cache", args.asset_root)
            try:
                asyncio.run(hold(url, 4 * w, 2.0, args.character))  # connections spread over the workers
                pss = sum(proc_kib(p, "Pss", "smaps_rollup") for p in process_tree(proc.pid)) / 1024
                print(f"| {w} | {pss:.0f} |")
            finally:
                proc.close()


if __name__ == "__main__":
    main()
