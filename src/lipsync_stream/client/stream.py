"""An async LipsyncStream client: open a session, send audio, receive decoded frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import cv2
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..wire.protocol import BYTES_PER_SAMPLE, FRAME_HEIGHT, FRAME_WIDTH, SAMPLE_RATE, FrameMessage, SessionParams, decode_frame, first_message, frame_start

CHUNK_BYTES = 8000  # 250 ms, what the original endpoint asks clients for
IN_FLIGHT_SECONDS = 10.0  # audio sent ahead of the frames received, when sending a whole file


class ServerError(Exception):
    """The server refused or ended the session with an error."""

    def __init__(self, kind: str, detail: str, code: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}" + (f" (close code {code})" if code is not None else ""))
        self.kind = kind
        self.detail = detail
        self.code = code
        self.http_status: int | None = None  # when the server refused before the websocket upgrade


def decode_image(frame: FrameMessage) -> np.ndarray:
    """The frame's picture as a (512, 512, 3) BGR array, whether it came as JPEG or raw."""
    if len(frame.image) == FRAME_WIDTH * FRAME_HEIGHT * 3 and frame.image[:2] != b"\xff\xd8":
        return np.frombuffer(frame.image, np.uint8).reshape(frame.height, frame.width, 3)
    image = cv2.imdecode(np.frombuffer(frame.image, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"frame {frame.index}: undecodable JPEG")
    return image


@dataclass(frozen=True)
class Frame:
    """A received frame, decoded: its index, the picture (BGR) and its audio (PCM16 bytes)."""

    index: int
    image: np.ndarray
    audio: bytes


class AudioFeed:
    """Live audio for a session, filled from any thread (a microphone callback, say)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, pcm: bytes) -> None:
        """Add audio; safe to call from another thread (ignored once the session has ended)."""
        self._send(bytes(pcm))

    def close(self) -> None:
        """No more audio (the session will send DONE once it has sent what is queued)."""
        self._send(None)

    def _send(self, item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the session's loop has already closed
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def get(self, timeout: float | None) -> bytes | None:
        """Next chunk; b"" when nothing came within *timeout*; None once closed."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return b""


class LipsyncClient:
    """One session. Use as ``async with LipsyncClient(url, params) as c:``.

    *api_key*, for a server that asks for one, goes in the upgrade's ``Authorization`` header
    (never in the URL). A browser-style client sends a ``session_token`` in *params* instead.
    """

    def __init__(self, url: str, params: SessionParams | None = None, api_key: str | None = None) -> None:
        self.url = url
        self.params = params or SessionParams()
        self.api_key = api_key
        self._ws: ClientConnection | None = None
        self.done = False
        self.returned_samples = 0  # how far into the audio the frames received so far reach
        self._progress = asyncio.Event()

    async def __aenter__(self) -> LipsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            self._ws = await connect(self.url, max_size=None, compression=None, additional_headers=headers)
        except InvalidStatus as exc:  # refused before the upgrade (401, 403): say why
            raise _server_error(exc.response.body.decode(errors="replace"), None, exc.response.status_code) from None
        await self._ws.send(first_message(self.params))
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()

    @property
    def ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("client is not connected")
        return self._ws

    async def send_audio(self, pcm: bytes | np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> None:
        """Send PCM16 audio in chunks of *chunk_bytes*."""
        data = pcm.astype("<i2").tobytes() if isinstance(pcm, np.ndarray) else pcm
        for start in range(0, len(data), chunk_bytes):
            await self.ws.send(data[start : start + chunk_bytes])

    async def send_paced(self, pcm: bytes | np.ndarray, in_flight: float = IN_FLIGHT_SECONDS, chunk_bytes: int = CHUNK_BYTES) -> None:
        """Send PCM16 audio keeping at most *in_flight* seconds ahead of the frames received.

        For whole files: the server never holds more than that of this client's audio, whatever
        the file's length and whatever the server's own limits. :meth:`frames` must be running
        meanwhile (it reports the frames' progress).
        """
        data = pcm.astype("<i2").tobytes() if isinstance(pcm, np.ndarray) else pcm
        ahead = 2 * int(in_flight * SAMPLE_RATE)
        for start in range(0, len(data), chunk_bytes):
            while start - 2 * self.returned_samples > ahead:
                self._progress.clear()
                await self._progress.wait()
            await self.ws.send(data[start : start + chunk_bytes])

    async def pump(self, feed: AudioFeed, idle_chunk_s: float = 0.25) -> None:
        """Send *feed*'s audio as it comes, then DONE when it closes.

        While the caller has nothing, 250 ms of silence goes out every 250 ms so that frames keep
        coming (as the original clients do), unless the session asked for ``handleSilence``, in
        which case the server makes the idle frames itself.
        """
        odd = b""
        while True:
            chunk = await feed.get(None if self.params.handle_silence else idle_chunk_s)
            if chunk is None:
                break
            if chunk == b"":
                await self.ws.send(bytes(BYTES_PER_SAMPLE * int(SAMPLE_RATE * idle_chunk_s)))
                continue
            data = odd + chunk
            if len(data) % 2:  # keep whole samples together across chunks
                data, odd = data[:-1], data[-1:]
            else:
                odd = b""
            await self.send_audio(data)
        await self.finish()

    async def finish(self) -> None:
        """No more audio: the server sends what is left, then DONE."""
        await self.ws.send("DONE")

    async def skip(self) -> None:
        """Drop all audio the server has not rendered yet (barge-in)."""
        await self.ws.send("SKIP")

    async def frames(self) -> AsyncIterator[FrameMessage]:
        """Frames as they arrive, until the server's DONE; a server error raises ServerError."""
        ws = self.ws
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    frame = decode_frame(message)
                    self.returned_samples = frame_start(frame.index + 1)
                    self._progress.set()
                    yield frame
                elif message == "DONE":
                    self.done = True
                    return
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ws.wait_closed(), 5.0)
                    raise _server_error(message, ws.close_code)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            raise ServerError("connection_closed", f"the connection closed before DONE ({exc})", code) from None
        raise ServerError("connection_closed", "the server closed the session without DONE", ws.close_code)

    async def decoded_frames(self) -> AsyncIterator[Frame]:
        """Like :meth:`frames`, with the pictures decoded to arrays."""
        async for message in self.frames():
            yield Frame(message.index, decode_image(message), message.audio or b"")


def _server_error(text: str, code: int | None, http_status: int | None = None) -> ServerError:
    try:
        obj = json.loads(text)
        error = ServerError(str(obj["error"]), str(obj.get("detail", "")), code)
    except (ValueError, KeyError, TypeError):
        error = ServerError("error", text.strip() or f"HTTP {http_status}", code)
    error.http_status = http_status
    return error


async def stream_audio(
    url: str,
    pcm: bytes | np.ndarray,
    params: SessionParams | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    in_flight: float = IN_FLIGHT_SECONDS,
    api_key: str | None = None,
) -> AsyncIterator[FrameMessage]:
    """Send all of *pcm* then DONE, yielding frames meanwhile (the common offline use).

    At most *in_flight* seconds of audio are sent ahead of the frames that came back, so any
    length works against any server of this protocol, in bounded memory on both sides.
    """
    async with LipsyncClient(url, params, api_key) as client:

        async def send() -> None:
            await client.send_paced(pcm, in_flight, chunk_bytes)
            await client.finish()

        sender = asyncio.create_task(send())
        try:
            async for frame in client.frames():
                yield frame
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender
