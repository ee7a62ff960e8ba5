"""Latency under load: N real-time sessions, each sending 250 ms chunks at real time.

For every frame: the time from the send of the chunk that completed the frame's audio to the
frame's arrival at the client. The server runs in its own process (``lipsync-stream serve``),
as it would in production; the clients share this process and decode nothing. Run by hand:

    .venv/bin/python bench/latency.py [--sessions 1 4 8] [--seconds 10] [--engine viseme] [--together]
        [--asset-root DIR --character NAME/NAME.mp4]   (a character prepared from video)

Goal on the 2-core machine with 8 sessions: p50 <= 60 ms, p99 <= 320 ms, every frame delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from serverproc import ServerProcess  # noqa: E402

from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402
from lipsync_stream.wire.protocol import decode_frame, frame_start, frames_for_samples  # noqa: E402

CHUNK = 4000  # samples: 250 ms


async def session(url: str, pcm: np.ndarray, start_at: float, character: str = "default") -> tuple[list[float], int]:
    """Latencies (s) of every frame, and the number of frames expected."""
    loop = asyncio.get_running_loop()
    sent_at: list[tuple[int, float]] = []  # (samples sent so far, when)
    latencies: list[float] = []
    n_expected = frames_for_samples(len(pcm))
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"video_reference_url": character}))

        async def send() -> None:
            await asyncio.sleep(max(0.0, start_at - loop.time()))
            t0 = loop.time()
            for j, i in enumerate(range(0, len(pcm), CHUNK)):
                await asyncio.sleep(max(0.0, t0 + j * CHUNK / 16000 - loop.time()))
                await ws.send(pcm[i : i + CHUNK].astype("<i2").tobytes())
                sent_at.append((min(len(pcm), i + CHUNK), loop.time()))
            await ws.send("DONE")

        sender = asyncio.create_task(send())
        async for message in ws:
            if isinstance(message, str):
                break
            now = loop.time()
            k = decode_frame(message).index
            end = min(frame_start(k + 1), len(pcm))
            chunk_time = next(t for n, t in sent_at if n >= end)
            latencies.append(now - chunk_time)
        await sender
    return latencies, n_expected


async def run(url: str, n: int, pcm: np.ndarray, character: str = "default", together: bool = False) -> tuple[np.ndarray, int, int]:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    # Sessions start a little apart, as real users do (and so chunk sends are not in lockstep),
    # unless *together*: all in the same instant, the worst case.
    spacing = 0.0 if together else 0.25 / max(1, n)
    results = await asyncio.gather(*(session(url, pcm, start + i * spacing, character) for i in range(n)))
    lat = np.concatenate([np.asarray(r[0]) for r in results])
    return lat, sum(len(r[0]) for r in results), sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--engine", default="viseme")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--server", default=None, help="measure a running server instead of starting one")
    parser.add_argument("--character", default="default", help="the character to ask for, e.g. NAME/NAME.mp4 of a prepared video under --asset-root")
    parser.add_argument("--asset-root", help="serve --asset-root DIR")
    parser.add_argument("--together", action="store_true", help="start the sessions in the same instant (else 250 ms spread over them)")
    args = parser.parse_args()
    speech = load_audio(sample_speech())
    pcm = np.tile(speech, int(np.ceil(args.seconds * 16000 / len(speech))))[: int(args.seconds * 16000)]
    server = None if args.server else ServerProcess(["--engine", args.engine, "--workers", str(args.workers), *(["--asset-root", args.asset_root] if args.asset_root else [])])
    url = args.server or server.url  # type: ignore[union-attr]
    try:
        asyncio.run(run(url, 1, pcm[:16000], args.character))  # warm up
        print(f"engine {args.engine}, character {args.character}{', started together' if args.together else ''}, workers {args.workers}, {os.cpu_count()} CPUs; {args.seconds:g} s of speech per session in 250 ms chunks at real time")
        print()
        print("| sessions | frames delivered | p50 ms | p90 ms | p99 ms | max ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in args.sessions:
            lat, got, expected = asyncio.run(run(url, n, pcm, args.character, args.together))
            ms = lat * 1000
            print(f"| {n} | {got}/{expected} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 90):.0f} | {np.percentile(ms, 99):.0f} | {ms.max():.0f} |")
    finally:
        if server:
            server.close()


if __name__ == "__main__":
    main()
