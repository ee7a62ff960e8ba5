"""Throughput of the server with ``realtime: false``: frames per second and where the time goes.

Starts ``lipsync-stream serve`` in its own process and runs N client sessions at once from this
one, each streaming the bundled sentence as fast as the server renders it. Prints: frames per
second; the server process's CPU time per frame (from /proc: everything it does, websockets and
event loop included, clients excluded); per-frame milliseconds per stage as the server reports
them at /metrics (audio features, engine, compositing, JPEG encoding, sending; with several
sessions these are wall times in the render threads and include waiting for the GIL); and the
floor: the cost of only JPEG-encoding the same frames, with the ratio. Run by hand:

    .venv/bin/python bench/throughput.py [--engine viseme] [--sessions 1 2 4] [--repeat 3] [--workers 1]
        [--asset-root DIR --character NAME/NAME.mp4]   (a character prepared from video)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess, process_tree  # noqa: E402

from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.characters.character import load_default_character  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402
from lipsync_stream.pipeline import DEFAULT_JPEG_QUALITY, encode_jpeg  # noqa: E402
from lipsync_stream.wire.protocol import frames_for_samples  # noqa: E402

STAGES = ("features", "engine", "compose", "encode", "send")


async def one_session(url: str, pcm: bytes, character: str = "default") -> int:
    """Stream *pcm* and count frames; the client decodes nothing, to keep its cost out."""
    frames = 0
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"realtime": False, "video_reference_url": character}))
        for i in range(0, len(pcm), 8000):
            await ws.send(pcm[i : i + 8000])
        await ws.send("DONE")
        async for message in ws:
            if isinstance(message, bytes):
                frames += 1
            elif message == "DONE":
                break
            else:
                raise RuntimeError(message)
    return frames


def jpeg_floor(n: int = 600) -> float:
    """Seconds per frame to only JPEG-encode the character's frames (best of three runs)."""
    frames = load_default_character().frames
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(n):
            encode_jpeg(frames[i % len(frames)], DEFAULT_JPEG_QUALITY)
        best = min(best, (time.perf_counter() - start) / n)
    return best


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def stage_seconds(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics").text
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r'^lipsync_stage_seconds_total\{stage="(\w+)"\} (\S+)$', text, re.M)}
    return {stage: found.get(stage, 0.0) for stage in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest is shown")
    parser.add_argument("--engine", default="viseme", help="lip-sync engine (viseme, energy)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--character", default="default", help="the character to ask for, e.g. NAME/NAME.mp4 of a prepared video under --asset-root")
    parser.add_argument("--asset-root", help="serve --asset-root DIR")
    args = parser.parse_args()

    pcm = load_audio(sample_speech()).astype("<i2").tobytes()
    per_session = frames_for_samples(len(pcm) // 2)
    floor = jpeg_floor()
    server = ServerProcess(["--engine", args.engine, "--workers", str(args.workers), *(["--asset-root", args.asset_root] if args.asset_root else [])])
    base_url = server.url.replace("ws://", "http://").rsplit("/", 1)[0]
    try:
        time.sleep(1.0 * args.workers)
        asyncio.run(one_session(server.url, pcm[:32000], args.character))  # warm up: character load, imports
        print(f"engine {args.engine}, character {args.character}, workers {args.workers}; {os.cpu_count()} CPUs; {len(pcm) / 32000:.2f} s of audio = {per_session} frames per session; JPEG quality {DEFAULT_JPEG_QUALITY}")
        print()
        print("| sessions | fps | server CPU ms/frame | features | engine | compose | JPEG + pack | send | JPEG-only floor ms | CPU / floor |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in args.sessions:
            best: tuple[float, float, dict[str, float]] | None = None
            for _ in range(args.repeat):
                pids = process_tree(server.pid)
                s0, c0, t0 = stage_seconds(base_url), cpu_seconds(pids), time.perf_counter()

                async def batch() -> list[int]:
                    return list(await asyncio.gather(*(one_session(server.url, pcm, args.character) for _ in range(n))))

                counts = asyncio.run(batch())
                wall, cpu = time.perf_counter() - t0, cpu_seconds(pids) - c0
                time.sleep(0.2)  # let the last sessions' stage times reach /metrics
                s1 = stage_seconds(base_url)
                assert all(c == per_session for c in counts), counts
                if best is None or wall < best[0]:
                    best = (wall, cpu, {k: s1[k] - s0[k] for k in STAGES})
            assert best is not None
            wall, cpu, stages = best
            total = n * per_session
            # With several workers /metrics answers from whichever one the kernel picks: its
            # stage times are not the run's, so none are shown.
            cells = [f"{1000 * stages[k] / total:.2f}" if args.workers == 1 else "-" for k in STAGES]
            print(f"| {n} | {total / wall:.0f} | {1000 * cpu / total:.2f} | {' | '.join(cells)} | {1000 * floor:.2f} | {cpu / total / floor:.1f}x |")
    finally:
        server.close()


if __name__ == "__main__":
    main()
