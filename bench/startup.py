"""Start-up: time from connecting to the first frame, for cached and uncached characters.

Runs ``lipsync-stream serve`` in a subprocess with a fresh cache directory and measures, from the
client's side, connect -> first message -> first frame:

- the default character, first session of the process and then already in memory;
- a 10 s, 1280x720 character video never seen before (face detection, crop, landmarks), then the
  same video from a new server process (decoded frames, detection and landmarks from the disk
  cache), then from memory.

    .venv/bin/python bench/startup.py

Goal: under 50 ms for a character already in memory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.characters.character import load_default_character  # noqa: E402


def make_video(path: Path, seconds: float = 10.0) -> None:
    src = load_default_character().frames
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"crf": "20", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
        for i in range(int(seconds * 30)):
            canvas = np.full((720, 1280, 3), 60, np.uint8)
            k = i % (2 * len(src) - 2)
            k = k if k < len(src) else 2 * len(src) - 2 - k
            canvas[100:612, 600:1112] = src[k]
            vf = av.VideoFrame.from_ndarray(canvas, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))


async def first_frame(url: str, character: str) -> float:
    start = time.perf_counter()
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"video_reference_url": character, "realtime": False}))
        await ws.send(bytes(2 * 1600))
        await ws.send("DONE")
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                return time.perf_counter() - start
            raise RuntimeError(message)


def server(root: Path, cache: Path) -> ServerProcess:
    return ServerProcess(["--asset-root", str(root), "--cache-dir", str(cache), "--workers", "1"])  # one process: its RSS and timings


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "chars", Path(tmp) / "cache"
        root.mkdir()
        make_video(root / "ten.mp4")
        rows = []
        srv = server(root, cache)
        try:
            rows.append(("default, first session of a new process (cache empty)", asyncio.run(first_frame(srv.url, "default"))))
            rows.append(("default, in memory", min(asyncio.run(first_frame(srv.url, "default")) for _ in range(5))))
            rows.append(("10 s 1280x720 video, never seen (detect, crop, landmarks)", asyncio.run(first_frame(srv.url, "ten.mp4"))))
            rows.append(("10 s video, in memory", min(asyncio.run(first_frame(srv.url, "ten.mp4")) for _ in range(5))))
        finally:
            srv.close()
        srv = server(root, cache)
        try:
            rows.append(("10 s video, new process, disk cache warm", asyncio.run(first_frame(srv.url, "ten.mp4"))))
            rows.append(("default, new process, disk cache warm", asyncio.run(first_frame(srv.url, "default"))))
        finally:
            srv.close()
    print("| character | connect to first frame (ms) |")
    print("|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.0f} |")


if __name__ == "__main__":
    main()
