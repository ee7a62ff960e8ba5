"""Heavy characters: load time and server memory, and what a normal session feels meanwhile.

Makes a large talking-head video (default 1280x1280, 1000 frames: the embedded character on a
bigger canvas, so faces must be found and the frame cropped), and a copy of it with one byte
appended (the same picture under another content key, so it is a second, separate load). Then,
each against a fresh ``lipsync-stream serve`` process with an empty cache:

1. one such character loaded: connect -> first frame, and the server's peak RSS meanwhile;
2. two loaded at once;
3. a normal session on the default character (already in memory) started while those two load:
   connect -> first frame.

Peak RSS is sampled every 20 ms from /proc over the server's process tree.

    .venv/bin/python bench/character_load.py [--side 1280] [--frames 1000]

Goals (issue 8): peak under 1 GB per load; the normal session's first frame under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import proc_kib  # noqa: E402
from serverproc import ServerProcess, process_tree  # noqa: E402
from startup import first_frame  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.characters.character import load_default_character  # noqa: E402


def make_video(path: Path, side: int, n_frames: int) -> None:
    """The default character's loop, ping-ponged, at the centre of a *side* x *side* canvas."""
    src = load_default_character().frames
    period = 2 * len(src) - 2
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"crf": "23", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = side, side, "yuv420p"
        canvas = np.full((side, side, 3), 70, np.uint8)
        y0 = x0 = (side - 512) // 2
        for i in range(n_frames):
            k = i % period
            canvas[y0 : y0 + 512, x0 : x0 + 512] = src[k if k < len(src) else period - k]
            vf = av.VideoFrame.from_ndarray(canvas, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))


class PeakRss:
    """Samples the RSS of a process tree in a background thread; ``peak`` in MB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = sum(proc_kib(p, "VmRSS") for p in process_tree(self.pid)) / 1024
            except (FileNotFoundError, ProcessLookupError):
                rss = 0.0
            self.peak = max(self.peak, rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def timed_first_frame(url: str, character: str) -> float:
    return await asyncio.wait_for(first_frame(url, character), 600)


def serve(root: Path, cache: Path) -> ServerProcess:
    return ServerProcess(["--asset-root", str(root), "--cache-dir", str(cache), "--workers", "1"])  # one process: its RSS and timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=1000)
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "chars"
        root.mkdir()
        started = time.perf_counter()
        make_video(root / "big1.mp4", args.side, args.frames)
        shutil.copy(root / "big1.mp4", root / "big2.mp4")
        with open(root / "big2.mp4", "ab") as f:
            f.write(b"\0")
        print(f"made {args.side}x{args.side}, {args.frames}-frame videos in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        srv = serve(root, Path(tmp) / "cache1")
        try:
            base = sum(proc_kib(p, "VmRSS") for p in process_tree(srv.pid)) / 1024
            with PeakRss(srv.pid) as peak:
                seconds = asyncio.run(timed_first_frame(srv.url, "big1.mp4"))
            rows.append(("one character load", f"{seconds:.1f} s to first frame", f"{peak.peak:.0f} (idle {base:.0f})"))
        finally:
            srv.close()

        srv = serve(root, Path(tmp) / "cache2")
        try:

            async def two() -> list[float]:
                return list(await asyncio.gather(timed_first_frame(srv.url, "big1.mp4"), timed_first_frame(srv.url, "big2.mp4")))

            with PeakRss(srv.pid) as peak:
                times = asyncio.run(two())
            rows.append(("two character loads at once", f"{max(times):.1f} s to both first frames", f"{peak.peak:.0f}"))
        finally:
            srv.close()

        srv = serve(root, Path(tmp) / "cache3")
        try:

            async def normal_during_loads() -> float:
                await timed_first_frame(srv.url, "default")  # in memory, as on a running server
                loads = [asyncio.create_task(timed_first_frame(srv.url, name)) for name in ("big1.mp4", "big2.mp4")]
                await asyncio.sleep(1.0)  # both loads under way
                normal = await timed_first_frame(srv.url, "default")
                await asyncio.gather(*loads)
                return normal

            with PeakRss(srv.pid) as peak:
                normal = asyncio.run(normal_during_loads())
            rows.append(("default-character session while two load", f"{normal * 1000:.0f} ms to first frame", f"{peak.peak:.0f}"))
        finally:
            srv.close()

    print(f"| case ({args.side}x{args.side}, {args.frames} frames) | time | server peak RSS (MB) |")
    print("|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
