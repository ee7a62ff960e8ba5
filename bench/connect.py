"""What one request costs the server: sequential /livez GETs, websocket upgrades (first message,
DONE, close) and session-token POSTs against a ``lipsync-stream serve`` process, one client at a
time and 12 at once. Run by hand:

    .venv/bin/python bench/connect.py [--count 300]

Prints requests per second and the median and p99 time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess  # noqa: E402


async def timed(count: int, parallel: int, one: Callable[[], Awaitable[None]]) -> tuple[float, float, float]:
    """(requests/s, median ms, p99 ms) of *count* calls of *one*, *parallel* at a time."""
    times: list[float] = []
    sem = asyncio.Semaphore(parallel)

    async def run() -> None:
        async with sem:
            t = time.perf_counter()
            await one()
            times.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(count)))
    took = time.perf_counter() - started
    times.sort()
    return count / took, 1000 * statistics.median(times), 1000 * times[int(0.99 * (len(times) - 1))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    server = ServerProcess(["--workers", "1"])
    try:
        async def exchange(data: bytes) -> None:
            """One request on a connection of its own (as probes and token requests come), raw:
            the client's own cost stays small beside the server's."""
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(data)
            answer = await reader.read()
            writer.close()
            if b" 200 " not in answer.split(b"\r\n", 1)[0]:
                raise RuntimeError(answer[:200])

        host = f"Host: 127.0.0.1:{server.port}\r\n"

        async def livez() -> None:
            await exchange(f"GET /livez HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode())

        body = json.dumps({"video_reference_url": "default"}).encode()

        async def token() -> None:
            await exchange(f"POST /startAudioToVideoSession HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)

        async def session() -> None:
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"video_reference_url": "default"}))
                await ws.send("DONE")
                async for _m in ws:
                    pass

        await timed(20, 1, session)  # warm
        print("request                     | at once | per s | median ms | p99 ms")
        for name, one in (("GET /livez", livez), ("websocket session (empty)", session), ("POST session token", token)):
            for parallel in (1, 12):  # 12: within the session limit of 2 cores
                rate, median, p99 = await timed(args.count, parallel, one)
                print(f"{name:<27} | {parallel:>7} | {rate:>5.0f} | {median:>9.2f} | {p99:>6.2f}")
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
