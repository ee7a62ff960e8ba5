"""Audio frame -> mouth shape -> composited image -> encoded frame message.

One :class:`FrameRenderer` per session: it owns the engine's per-session stream and knows the
character and the output format. It keeps how long each stage took, for logs and benchmarks.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .character import Character
from .engines.base import CLOSED, Engine, MouthShape, ReferenceFrame
from .jpeg import MCU
from .protocol import AudioFrame, SessionParams, encode_frame

DEFAULT_JPEG_QUALITY = 85


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """BGR uint8 -> baseline JPEG (libjpeg-turbo inside OpenCV)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over frames."""

    frames: int = 0
    features: float = 0.0  # audio features (part of `mouth`, for engines that report it)
    mouth: float = 0.0  # audio features and the engine's mapping to a mouth shape
    compose: float = 0.0
    encode: float = 0.0  # JPEG (or raw copy) and message packing
    send: float = 0.0  # handing the message to the websocket (measured by the server)

    @property
    def total(self) -> float:
        return self.mouth + self.compose + self.encode


class FrameRenderer:
    """One session's frames: weight-free engines draw in a worker thread (:meth:`render`);
    learned ones go through the engine's shared model (:meth:`render_learned`)."""

    def __init__(self, engine: Engine, character: Character, params: SessionParams, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> None:
        self.engine = engine
        self.stream = engine.stream()
        self.character = character
        self.params = params
        self.jpeg_quality = jpeg_quality
        self.times = StageTimes()
        self.last_shape = MouthShape()
        self.silent_frames = 0  # frames sent as the reference picture without a worker thread
        self.held_frames = 0  # learned engines: late frames that kept the last generated mouth
        self._last_output: Any = None
        # A place in the shared model's service (ServiceFull when it serves all it can).
        self._handle: int | None = engine.service.open() if engine.learned else None

    def skip(self) -> int:
        """SKIP: drop this session's model requests still queued; returns how many."""
        return self.engine.service.cancel(self._handle) if self._handle is not None else 0

    def close(self) -> None:
        """The session is over: its queued model requests are dropped, its place freed."""
        if self._handle is not None:
            self.engine.service.close(self._handle)
            self._handle = None

    def render(self, frame: AudioFrame) -> bytes:
        """The complete binary message for *frame* (in a worker thread)."""
        return self._render(frame, not frame.window.any() and self.stream.silent())

    def render_cheap(self, frame: AudioFrame) -> bytes | None:
        """The message for *frame* if it costs next to nothing, else None (then :meth:`render`).

        A frame of digital silence with the mouth at rest shows its reference frame's rest
        picture; once that is encoded (kept with the character, shared by its sessions), the
        message is only bytes put together, cheap enough for the event loop: idle sessions
        cost almost nothing.
        """
        if not self.params.is_jpg or frame.window.any():
            return None
        data = self.character.jpegs.rest(self.engine.name, self.character.ref_index(frame.index), self.jpeg_quality)
        if data is None or not self.stream.silent():
            return None
        self.silent_frames += 1
        self.last_shape = CLOSED
        self.times.frames += 1
        return encode_frame(frame.index, data, frame.pcm if self.params.sync_audio else None)

    async def render_learned(self, frame: AudioFrame, executor: Executor, late: bool = False) -> bytes:
        """A learned engine's frame: its input made here, the output from the shared model (in
        a batch with other sessions' frames), pasted back and encoded in a worker thread.

        *late*: the frame would reach the client after its playing time; rather than fall
        further behind, it keeps the last generated mouth (counted in ``held_frames``).
        """
        loop = asyncio.get_running_loop()
        if not frame.window.any() and self.stream.silent():
            return await loop.run_in_executor(executor, self._render, frame, True)
        assert self._handle is not None
        t0 = time.perf_counter()
        ref = self.character.reference(frame.index)
        box = self.character.boxes[ref.index]
        if late and self._last_output is not None:
            self.held_frames += 1
            output = self._last_output
        else:
            request = self.engine.service.submit(self._handle, self.stream.model_input(frame, ref, box))
            try:
                output = await asyncio.wrap_future(request)
                self._last_output = output
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not request.cancelled() or (task is not None and task.cancelling()):
                    raise  # the session itself is being torn down
                # SKIP dropped the request; the frame (its audio already taken) still goes out,
                # with the last generated mouth, or as the reference frame before there is one
                self.held_frames += 1
                if self._last_output is None:
                    return await loop.run_in_executor(executor, self._render, frame, True)
                output = self._last_output
        self.times.mouth += time.perf_counter() - t0
        return await loop.run_in_executor(executor, self._paste, frame, ref, box, output)

    def _paste(self, frame: AudioFrame, ref: ReferenceFrame, box: np.ndarray, output: Any) -> bytes:
        t1 = time.perf_counter()
        top, band = self.stream.compose_output(ref, box, output)
        if self.params.is_jpg:
            t2 = time.perf_counter()
            data = self.character.jpegs.get(ref.index, ref.image, self.jpeg_quality).splice(top // MCU, band, self.jpeg_quality)
        else:
            image = ref.image.copy()
            image[top : top + len(band)] = band
            t2 = time.perf_counter()
            data = image.tobytes()
        return self._message(frame, data, t1, t1, t2)

    def _render(self, frame: AudioFrame, silent: bool) -> bytes:
        t0 = time.perf_counter()
        shape = CLOSED if silent else self.stream.mouth(frame)
        t1 = time.perf_counter()
        ref = self.character.reference(frame.index)
        kept = self.character.jpegs.rest(self.engine.name, ref.index, self.jpeg_quality) if silent and self.params.is_jpg else None
        if kept is not None:  # another session drew it meanwhile
            t2 = time.perf_counter()
            data = kept
        elif self.params.is_jpg:
            # Only the rows the mouth changes are composed and encoded; the rest of the JPEG is
            # the reference frame's, encoded once for every session of this character.
            region = self.stream.compose_rows(ref, shape)
            t2 = time.perf_counter()
            reference = self.character.jpegs.get(ref.index, ref.image, self.jpeg_quality)
            data = reference.data if region is None else reference.splice(region[0] // MCU, region[1], self.jpeg_quality)
            if silent:
                self.character.jpegs.keep_rest(self.engine.name, ref.index, self.jpeg_quality, data)
        else:
            image = self.stream.compose(ref, shape)
            t2 = time.perf_counter()
            data = np.ascontiguousarray(image).tobytes()
        self.last_shape = shape
        return self._message(frame, data, t0, t1, t2)

    def _message(self, frame: AudioFrame, data: bytes, t0: float, t1: float, t2: float) -> bytes:
        """The frame message around the encoded picture; the stage times are added up."""
        message = encode_frame(frame.index, data, frame.pcm if self.params.sync_audio else None)
        t3 = time.perf_counter()
        times = self.times
        times.frames += 1
        times.features = self.stream.feature_seconds
        times.mouth += t1 - t0
        times.compose += t2 - t1
        times.encode += t3 - t2
        return message
