"""The slow hostile-client probes (tests/test_hostile.py has the quick ones): floods and crowds
against a ``lipsync-stream serve`` process on loopback, with the server's memory, exit time and
answers measured from outside. Run by hand; prints one table:

    .venv/bin/python bench/hostile.py [--flood-seconds 20] [--refused 1500] [--wrong-keys 1300]

Each row says what a hostile client did, what the server did, and the bound it must keep.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from serverproc import ServerProcess  # noqa: E402
from test_hostile import non_reader, ping_flood, ws_frame  # noqa: E402  (the quick probes' clients)

from lipsync_stream.serve.auth import add_key  # noqa: E402

ROWS: list[tuple[str, str, str]] = []


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


async def probe_flood(seconds: float) -> None:
    server = ServerProcess([])
    try:
        before = rss_mb(server.pid)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(None, functools.partial(ping_flood, server.port, seconds=seconds)) for _ in range(4)))
        peak = rss_mb(server.pid)
        dropped = sum(d for d, _s in results)
        mb = sum(s for _d, s in results) / 1e6
        ROWS.append(("4 sockets send pings, never read", f"{mb:.0f} MB of pings in {seconds:g} s; {dropped}/4 dropped; server +{peak - before:.0f} MB", "bounded: dropped at 4 MiB unsent"))
    finally:
        server.close()


async def probe_refused(count: int) -> None:
    server = ServerProcess(["--max-sessions", "1", "--workers", "1"])
    try:
        held = await connect(server.url)
        await held.send(json.dumps({"video_reference_url": "default", "handleSilence": True}))
        # The held session's own caches (the character's frames as JPEG rows, its mouth rigs)
        # grow for its first seconds: the baseline is taken once they have.
        await asyncio.sleep(8.0)
        before = rss_mb(server.pid)

        async def refused() -> str:
            try:
                async with connect(server.url, open_timeout=30) as ws:
                    return str(json.loads(await asyncio.wait_for(ws.recv(), 30))["error"])
            except Exception as exc:
                return type(exc).__name__

        kinds: collections.Counter[str] = collections.Counter()
        for start in range(0, count, 100):
            kinds.update(await asyncio.gather(*(refused() for _ in range(min(100, count - start)))))
        await asyncio.sleep(2.0)
        after = rss_mb(server.pid)
        await held.close()
        await asyncio.sleep(0.5)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
        exit_s = time.monotonic() - started
        ROWS.append((f"{count} connections refused at --max-sessions 1", f"{dict(kinds)}; server +{after - before:.0f} MB kept", "refused connections forgotten"))
        ROWS.append(("then SIGTERM with no session running", f"exited in {exit_s:.2f} s (drain timeout 30 s)", "exit at once"))
    finally:
        if server.proc.poll() is None:
            server.close()


async def probe_non_reader() -> None:
    server = ServerProcess(["--drain-timeout", "2"])
    try:
        sock = non_reader(server.port)
        first = json.dumps({"video_reference_url": "default", "isJPG": False, "realtime": False}).encode()
        sock.sendall(ws_frame(1, first))
        sock.settimeout(5.0)
        for _ in range(20):  # 20 s of audio: raw frames the client never takes
            sock.sendall(ws_frame(2, bytes(32000)))
        time.sleep(2.0)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
        ROWS.append(("SIGTERM with a client that never reads", f"exited in {time.monotonic() - started:.2f} s (--drain-timeout 2)", "drain timeout + 2 s"))
        sock.close()
    finally:
        if server.proc.poll() is None:
            server.close()


async def probe_keys(wrong: int, keys: Path) -> None:
    key = add_key(keys, "real")
    server = ServerProcess(["--api-keys", str(keys)])
    try:
        base = f"http://127.0.0.1:{server.port}"
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            started = time.monotonic()
            sem = asyncio.Semaphore(300)

            async def guess(i: int) -> int:
                async with sem:
                    r = await client.post(f"{base}/startAudioToVideoSession", json={"apiKey": f"lsk_wrong{i}"})
                    return r.status_code

            codes = collections.Counter(await asyncio.gather(*(guess(i) for i in range(wrong))))
            took = time.monotonic() - started
            ROWS.append((f"{wrong} wrong keys, 300 at once", f"{dict(codes)} in {took:.0f} s", "401 each, delay capped at 5 s"))
            # 70 keyless upgrades that never speak, then a token holder
            silent = [await connect(server.url) for _ in range(70)]
            token = (await client.post(f"{base}/startAudioToVideoSession", json={"apiKey": key})).json()["session_token"]
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"session_token": token}))
                await ws.send(bytes(16000))
                await ws.send("DONE")
                got = [m async for m in ws]
            ROWS.append(("70 keyless upgrades never speak, then a token", f"{'frames then DONE' if got and got[-1] == 'DONE' else got[-1:]}", "the token holder gets frames"))
            for ws in silent:
                await ws.close()
    finally:
        server.close()


async def probe_tokens(count: int) -> None:
    server = ServerProcess([])
    try:
        base = f"http://127.0.0.1:{server.port}"

        async def livez(client: httpx.AsyncClient) -> float:
            times = []
            for _ in range(30):
                t = time.perf_counter()
                await client.get(f"{base}/livez")
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000

        async with httpx.AsyncClient(timeout=30) as client:
            first = await livez(client)
            started = time.monotonic()
            for _ in range(count):
                token = (await client.post(f"{base}/startAudioToVideoSession", json={"video_reference_url": "default"})).json()["session_token"]
                async with connect(server.url) as ws:
                    await ws.send(json.dumps({"session_token": token}))
                    await ws.send("DONE")
                    async for _m in ws:
                        pass
            took = time.monotonic() - started
            last = await livez(client)
        ROWS.append((f"{count} token redemptions", f"{count / took:.0f}/s; /livez median {first:.1f} -> {last:.1f} ms", "constant cost"))
    finally:
        server.close()


def udp_sockets(pid: int) -> int:
    """UDP sockets process *pid* has open."""
    inodes: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        inodes |= {line.split()[9] for line in Path(table).read_text().splitlines()[1:]}
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = str(fd.readlink())
        except OSError:
            continue
        count += link.startswith("socket:[") and link[8:-1] in inodes
    return count


async def probe_offers(count: int) -> None:
    """Offers answered and never connected (no ICE, no DTLS): how long the server stays full."""
    try:
        from aiortc import RTCPeerConnection
    except ImportError:
        ROWS.append((f"{count} WebRTC offers never completed", "skipped: no aiortc ([webrtc] extra)", ""))
        return
    server = ServerProcess([])
    try:
        base = f"http://127.0.0.1:{server.port}"
        before = udp_sockets(server.pid)
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(count):
                pc = RTCPeerConnection()
                pc.addTransceiver("video", direction="recvonly")
                pc.createDataChannel("control")
                await pc.setLocalDescription(await pc.createOffer())
                await client.post(f"{base}/webrtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
                await pc.close()
            sent = time.monotonic()
            peak = udp_sockets(server.pid)
            full = (await client.get(f"{base}/healthz")).text.strip()
            while time.monotonic() - sent < 120:
                if (await client.get(f"{base}/healthz")).status_code == 200 and udp_sockets(server.pid) <= before:
                    break
                await asyncio.sleep(0.2)
            released = time.monotonic() - sent
        ROWS.append((f"{count} WebRTC offers never completed", f"/healthz '{full}', {peak - before} UDP sockets; all released {released:.1f} s after the last, {udp_sockets(server.pid) - before} left", "released within seconds, sockets closed"))
    finally:
        server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--refused", type=int, default=1500)
    parser.add_argument("--wrong-keys", type=int, default=1300)
    parser.add_argument("--redemptions", type=int, default=1000)
    parser.add_argument("--offers", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await probe_flood(args.flood_seconds)
        await probe_refused(args.refused)
        await probe_non_reader()
        await probe_keys(args.wrong_keys, Path(tmp) / "keys")
        await probe_tokens(args.redemptions)
        await probe_offers(args.offers)
    width = max(len(r[0]) for r in ROWS)
    print(f"{'probe':<{width}} | what the server did | bound")
    for probe, result, bound in ROWS:
        print(f"{probe:<{width}} | {result} | {bound}")


if __name__ == "__main__":
    asyncio.run(main())
