"""One session's connection after its handshake: the reader and writer tasks around the
sans-I/O :class:`~lipsync_stream.wire.session.Session` (the server admits it and hands it over)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from concurrent.futures import Executor
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from ..engines.base import Engine
from ..pipeline import FrameRenderer
from ..wire.protocol import BYTES_PER_SECOND, ErrorKind
from ..wire.session import Fail, Finish, Render, Session, State, Wait
from .auth import ApiKey
from .metrics import Metrics
from .server_config import ServerConfig


class SessionHost(Protocol):
    """What a session stream needs of the server that admitted it (``server.LipsyncServer``)."""

    @property
    def engine(self) -> Engine: ...
    @property
    def config(self) -> ServerConfig: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def executor(self) -> Executor: ...

    async def fail(self, ws: ServerConnection, sid: str, kind: ErrorKind, detail: str, drain: bool = True, timeout: float | None = None) -> None: ...

    def log_done(self, sid: str, session: Session, renderer: FrameRenderer) -> None: ...

log = logging.getLogger(__name__)

#: a learned engine's real-time frame this close to its playing time keeps the last generated
#: mouth instead of waiting for the model (never behind real time)
LEARNED_MARGIN = 0.1


class SessionStream:
    """One session's connection after its handshake: a reader task that hands the client's
    messages to the sans-I/O session, and a writer loop that asks the session what to do next,
    renders frames (several in flight for a learned engine's offline session) and sends them in
    order, until the session finishes or fails."""

    def __init__(self, server: SessionHost, ws: ServerConnection, sid: str, session: Session, renderer: FrameRenderer, key: ApiKey | None) -> None:
        self.server, self.ws, self.sid, self.session, self.renderer, self.key = server, ws, sid, session, renderer, key
        self.loop = asyncio.get_running_loop()
        self.wake = asyncio.Event()  # set by the reader: a message came (or the connection ended)
        self.room = asyncio.Event()  # set by the writer after each frame: there may be room to read again
        # Frames being rendered, oldest first. A learned engine keeps several frames of an offline
        # session in flight, so that they go through the shared model in one batch; real-time
        # frames go one at a time (paced, each checked for lateness just before the model), and
        # the weight-free engines draw one at a time. Frames always go out in order.
        engine = server.engine
        self.depth = server.config.learned_frames_in_flight if engine.learned and not session.params.realtime else 1
        self.in_flight: collections.deque[tuple[asyncio.Future[bytes], Render, float]] = collections.deque()

    async def read(self) -> None:
        """The reader: every message to the session, pausing while the session says so."""
        session, metrics = self.session, self.server.metrics
        try:
            while True:
                while session.reading_paused:
                    # Flow control: unread, the client's messages wait in the TCP buffers and
                    # its sends block, so a long file sent at once costs bounded memory here.
                    self.room.clear()
                    await self.room.wait()
                try:
                    message = await self.ws.recv()
                except ConnectionClosedOK:
                    return
                skips = session.skips
                session.receive(message, self.loop.time())
                if session.skips != skips:  # SKIP: the model's queue drops this session's frames too
                    self.renderer.skip()
                if isinstance(message, bytes):
                    metrics.audio_seconds.inc(len(message) / BYTES_PER_SECOND)
                    if self.key is not None:
                        metrics.key_audio_seconds.labels(self.key.name).inc(len(message) / BYTES_PER_SECOND)
                self.wake.set()
        finally:
            self.wake.set()

    async def render(self, step: Render) -> bytes:
        renderer, server = self.renderer, self.server
        # Silence on a mouth at rest is the reference frame: no thread needed.
        message = renderer.render_cheap(step.frame)
        if message is not None:
            server.metrics.silent_frames.inc()
            return message
        if server.engine.learned:
            play = self.session.play_time(step.frame.index)
            late = play is not None and self.loop.time() > play - LEARNED_MARGIN
            return await renderer.render_learned(step.frame, server.executor, late)
        return await self.loop.run_in_executor(server.executor, renderer.render, step.frame)

    async def deliver(self) -> bool:
        """Send the oldest frame in flight; False when that failed (the session then fails)."""
        server, session = self.server, self.session
        task, step, started = self.in_flight.popleft()
        try:
            message = await task
        except Exception as exc:
            log.exception("[%s] rendering frame %d failed", self.sid, step.frame.index, exc_info=exc)
            session.fail(ErrorKind.INTERNAL, f"rendering frame {step.frame.index} failed: {type(exc).__name__}")
            return False
        server.metrics.render_time.observe(time.perf_counter() - started)
        sending = time.perf_counter()
        try:
            await asyncio.wait_for(self.ws.send(message), server.config.send_timeout)
        except TimeoutError:
            session.fail(ErrorKind.LIMIT, f"the client took no frame for {server.config.send_timeout:g} s (it is not reading); closing")
            return False
        self.renderer.times.send += time.perf_counter() - sending
        server.metrics.frames.inc()
        server.metrics.frame_latency.observe(max(0.0, self.loop.time() - step.audio_at))
        self.room.set()
        return True

    async def run(self) -> None:
        """The writer loop, with the reader running beside it."""
        server, session, ws, sid = self.server, self.session, self.ws, self.sid
        reader = asyncio.create_task(self.read(), name=f"{sid}-reader")
        try:
            while True:
                self.wake.clear()
                if reader.done():
                    if reader.exception() is not None:
                        raise reader.exception()  # type: ignore[misc]
                    if session.state is State.STREAMING:
                        log.info("[%s] client closed the connection after %d frames", sid, session.frames_released)
                        return
                step = session.next_step(self.loop.time())
                if isinstance(step, Render):
                    self.in_flight.append((asyncio.ensure_future(self.render(step)), step, time.perf_counter()))
                    if len(self.in_flight) >= self.depth:
                        await self.deliver()
                elif isinstance(step, Wait):
                    if self.in_flight:  # what is rendering goes out before any waiting
                        await self.deliver()
                        continue
                    timeout = None if step.until is None else max(0.0, step.until - self.loop.time())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout)
                elif isinstance(step, Finish):
                    while self.in_flight:
                        if not await self.deliver():
                            await server.fail(ws, sid, ErrorKind.INTERNAL, "the last frames could not be sent", drain=False)
                            return
                    await ws.send("DONE")
                    await ws.close()
                    server.log_done(sid, session, self.renderer)
                    return
                elif isinstance(step, Fail):
                    await server.fail(ws, sid, step.kind, step.detail, drain=False)  # the reader still reads
                    return
        finally:
            for task, _step, _started in self.in_flight:
                task.cancel()
            for task, _step, _started in self.in_flight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for stage, seconds in self.renderer.times.stages().items():
                server.metrics.stage_seconds.labels(stage).inc(max(0.0, seconds))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader
