"""Throughput of the server with ``realtime: false``: frames per second and where the time goes.

Runs a server in this process and N client sessions at once, each streaming the bundled sentence
as fast as the server renders it, and prints a table: end-to-end frames per second, per-frame
milliseconds of wall time per stage in the render threads (engine, compositing, JPEG encoding;
with several sessions these include waiting for the GIL), the process's CPU time per frame
(server and the frame-counting clients, everything: websockets, event loop, threads), and the
JPEG-only floor (encoding the same reference frames and nothing else). Run by hand:

    .venv/bin/python bench/throughput.py [--engine viseme] [--sessions 1 2 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from websockets.asyncio.client import connect

from lipsync_stream.audio import load_audio
from lipsync_stream.character import load_default_character
from lipsync_stream.cli import sample_speech
from lipsync_stream.pipeline import DEFAULT_JPEG_QUALITY, StageTimes, encode_jpeg
from lipsync_stream.protocol import frames_for_samples
from lipsync_stream.server import ServerConfig, running_server


async def one_session(url: str, pcm: bytes) -> int:
    """Stream *pcm* and count frames; the client decodes nothing, to keep its cost out."""
    frames = 0
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"realtime": False}))
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


def jpeg_floor(n: int = 120) -> float:
    """Seconds per frame to only JPEG-encode the character's frames."""
    frames = load_default_character().frames
    start = time.perf_counter()
    for i in range(n):
        encode_jpeg(frames[i % len(frames)], DEFAULT_JPEG_QUALITY)
    return (time.perf_counter() - start) / n


async def run(sessions: list[int], repeat: int, engine: str) -> None:
    pcm = load_audio(sample_speech()).astype("<i2").tobytes()
    per_session = frames_for_samples(len(pcm) // 2)
    floor = jpeg_floor()
    print(f"engine {engine}; machine: {os.cpu_count()} CPUs; audio {len(pcm) / 32000:.2f} s = {per_session} frames per session; JPEG quality {DEFAULT_JPEG_QUALITY}")
    print()
    print("| sessions | frames | wall s | fps total | fps/session | ms/frame features | engine | compose | JPEG+pack | send | render total | JPEG share | CPU ms/frame | JPEG floor ms | CPU/floor |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    async with running_server(ServerConfig(port=0, engine=engine)) as (app, url):
        await one_session(url, pcm[:32000])  # warm up: character load, imports
        for n in sessions:
            best: tuple[float, StageTimes] | None = None
            for _ in range(repeat):
                app.stage_times = StageTimes()
                start, cpu0 = time.perf_counter(), time.process_time()
                counts = await asyncio.gather(*(one_session(url, pcm) for _ in range(n)))
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
                assert all(c == per_session for c in counts), counts
                if best is None or wall < best[0]:
                    best = (wall, app.stage_times, cpu)
            assert best is not None
            wall, t, cpu = best
            total = n * per_session
            ms = lambda x: 1000 * x / t.frames  # noqa: E731
            print(
                f"| {n} | {total} | {wall:.2f} | {total / wall:.1f} | {per_session / wall:.1f} | {ms(t.features):.2f} | {ms(t.mouth - t.features):.2f} | {ms(t.compose):.2f} | {ms(t.encode):.2f} | {ms(t.send):.2f} "
                f"| {ms(t.total):.2f} | {t.encode / t.total:.0%} | {1000 * cpu / total:.2f} | {1000 * floor:.2f} | {cpu / total / floor:.1f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the fastest is shown")
    parser.add_argument("--engine", default="viseme", help="lip-sync engine (viseme, energy)")
    args = parser.parse_args()
    asyncio.run(run(args.sessions, args.repeat, args.engine))


if __name__ == "__main__":
    main()
