"""Running a :class:`~lipsync_stream.serve.server.LipsyncServer`: in this process's event loop (until a
signal, then drained), on an ephemeral port for tests and tools, in a background thread for
synchronous programs, or as N worker processes sharing one port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from websockets.asyncio.server import Server

from ..characters import facemodels
from ..cpus import cpus
from .server import LipsyncServer
from .server_config import ServerConfig

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig | None = None) -> AsyncIterator[tuple[LipsyncServer, str]]:
    """A server on an ephemeral port for in-process use: yields (server, ws:// or wss:// URL)."""
    config = config or ServerConfig(port=0)
    app = LipsyncServer(config)
    scheme = "wss" if config.certfile is not None else "ws"
    try:
        async with app.serve() as ws_server:
            yield app, f"{scheme}://{config.host}:{bound_port(ws_server)}/LipsyncStream"
    finally:
        app.close()


def bound_port(ws_server: Server) -> int:
    """The TCP port a started server listens on (port 0 asks the system for a free one)."""
    return int(next(iter(ws_server.sockets)).getsockname()[1])


async def serve_forever(config: ServerConfig) -> None:
    """Run until SIGINT/SIGTERM, then drain: stop accepting, let sessions finish for up to
    ``config.drain_timeout`` seconds, close the rest (a second signal stops at once)."""
    import signal

    app = LipsyncServer(config)
    async with app.serve() as ws_server:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        scheme, page = ("wss", "https") if config.certfile is not None else ("ws", "http")
        host = f"[{config.host}]" if ":" in config.host else config.host
        port = bound_port(ws_server)
        access = f"API keys from {config.api_keys} ({len(app.keys or [])} now)" if app.keys is not None else "open to anyone who can reach it"
        log.info("serving LipsyncStream on %s://%s:%d/LipsyncStream, the page at %s://%s:%d/ (engine %s, at most %d sessions, %s)", scheme, host, port, page, host, port, app.engine.name, app.max_sessions, access)
        if config.metrics_port is not None:
            log.info("metrics at http://%s:%d/metrics", config.metrics_host, config.metrics_port)
        if not facemodels.available():
            log.warning("the face models are missing from %s (a trimmed install?): only the default character and prepared ones load", facemodels.MODELS)
        await stop.wait()
        log.info("shutting down: draining for at most %g s (a second signal stops at once)", config.drain_timeout)
        stop.clear()
        drained = asyncio.ensure_future(app.drain(config.drain_timeout))
        interrupted = asyncio.ensure_future(stop.wait())
        await asyncio.wait({drained, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drained, interrupted):
            task.cancel()
    app.close()


class ServerThread:
    """A server on an ephemeral port, run by its own event loop in a background thread.

    For synchronous programs (the player) that want an in-process server.
    """

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig(port=0)
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with running_server(self.config) as (_app, url):
            self.url = url
            self._ready.set()
            await self._stop

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))  # type: ignore[union-attr]
        self._thread.join(10)


def serve_workers(config: ServerConfig, workers: int, log_level: int = logging.INFO) -> int:
    """Run *workers* server processes on one port (SO_REUSEPORT); the kernel spreads connections.

    Each worker has its own event loop and render threads (no shared GIL); characters are shared
    through the memory-mapped decoded-character cache on disk.
    """
    import multiprocessing
    import signal
    import socket

    config.reuse_port = True
    config.render_threads = max(1, cpus() // workers)
    config.max_sessions = max(1, -(-config.session_limit() // workers))  # the machine's limit, shared
    # Port 0 would give each worker a port of its own: pick one for all, held until they bind it.
    reserved = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((config.host, config.port))
    config.port = int(reserved.getsockname()[1])
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(config, i, log_level), name=f"worker-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()
    log.info("started %d workers on port %d", workers, config.port)
    reserved.close()

    def stop(_sig: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()
    return max((proc.exitcode or 0) for proc in procs if proc.exitcode is not None and proc.exitcode > 0) if any((p.exitcode or 0) > 0 for p in procs) else 0


def _worker_main(config: ServerConfig, index: int, log_level: int = logging.INFO) -> None:
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s w{index} %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(max(logging.WARNING, log_level))
    asyncio.run(serve_forever(config))
