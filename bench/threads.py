"""Rendering in threads of one process: does the per-frame path let go of the GIL?

Renders the bundled sentence (default character, viseme engine, JPEG) with the server's own
renderer, one session per thread, in 1 and 2 threads (more with ``--threads``), no websockets:
frames per second and the speed-up over one thread, then each stage alone (audio features and
the engine's decision, the face region, the JPEG splice) in the same threads. A stage that
holds the GIL gives about 1x in two threads; one that does not, close to 2x on two cores. Run
by hand:

    .venv/bin/python bench/threads.py [--threads 1 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

from lipsync_stream.audio import load_audio
from lipsync_stream.characters.character import load_default_character
from lipsync_stream.cli import sample_speech
from lipsync_stream.engines import get_engine
from lipsync_stream.engines.meshwarp import compose_region
from lipsync_stream.jpeg import MCU
from lipsync_stream.pipeline import DEFAULT_JPEG_QUALITY, FrameRenderer
from lipsync_stream.wire.protocol import AudioFrame, AudioFramer, SessionParams


def audio_frames(engine_lookahead: int, engine_context: int) -> list[AudioFrame]:
    framer = AudioFramer(engine_lookahead, engine_context)
    framer.push(load_audio(sample_speech()).tobytes())
    framer.flush()
    frames = []
    while framer.ready():
        frames.append(framer.pop())
    return frames


def in_threads(work: Callable[[], object], threads: int, repeat: int) -> float:
    """Best wall time of *repeat* runs of *work* in each of *threads* threads at once."""
    best = float("inf")
    for _ in range(repeat):
        pool = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N")
    parser.add_argument("--repeat", type=int, default=5, metavar="N", help="runs per figure, best kept (default 5)")
    args = parser.parse_args()

    character = load_default_character()
    engine = get_engine("viseme")
    frames = audio_frames(engine.lookahead_samples, engine.context_samples)
    params = SessionParams()
    n = len(frames)

    def session() -> None:
        renderer = FrameRenderer(engine, character, params)
        for frame in frames:
            renderer.render(frame)

    # Inputs of each stage alone, worked out once.
    stream = engine.stream()
    shapes = [stream.analyse(frame).shape for frame in frames]
    refs = [character.reference(frame.index) for frame in frames]
    regions = [compose_region(ref, shape) for ref, shape in zip(refs, shapes, strict=True)]

    def hearing() -> None:
        s = engine.stream()
        for frame in frames:
            s.analyse(frame)

    def drawing() -> None:
        for ref, shape in zip(refs, shapes, strict=True):
            compose_region(ref, shape)

    def encoding() -> None:
        for ref, region in zip(refs, regions, strict=True):
            reference = character.jpegs.get(ref.index, ref.image, DEFAULT_JPEG_QUALITY)
            if region is not None:
                reference.splice(region[0] // MCU, region[1], DEFAULT_JPEG_QUALITY)

    work = {"whole frame": session, "features + decision": hearing, "face region": drawing, "JPEG splice": encoding}
    for w in work.values():
        w()  # warm: compiled kernels, the reference JPEGs, the mouth rigs
    print(f"{os.cpu_count()} CPUs; {n} frames per session (bundled sentence); best of {args.repeat}\n")
    header = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in args.threads)
    print(f"| stage | ms/frame, 1 thread | fps: {header} | speed-up, {max(args.threads)} threads |")
    print("|---|---:|" + "---:|" * len(args.threads) + "---:|")
    for name, w in work.items():
        fps = [t * n / in_threads(w, t, args.repeat) for t in args.threads]
        one = fps[args.threads.index(1)] if 1 in args.threads else fps[0]
        cells = " | ".join(f"{f:.0f}" for f in fps)
        print(f"| {name} | {1000.0 / one:.3f} | {cells} | {fps[-1] / one:.2f}x |")


if __name__ == "__main__":
    main()
