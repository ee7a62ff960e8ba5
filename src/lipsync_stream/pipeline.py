"""Audio frame -> mouth -> face region -> composited, encoded frame message.

One :class:`FrameRenderer` per session: it owns the engine's per-session stream and knows the
character and the output format. Every engine goes the same way (:mod:`.engines.base`): its
stream's ``mouth()`` from the frame's audio window, for learned engines the shared model's
output for that mouth, its ``draw()`` of the face region, and one compositing and encoding step.
It keeps how long each stage took, for logs and benchmarks.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .characters.character import Character
from .engines.base import CLOSED, Engine, LearnedMouth, MouthShape, ReferenceFrame, Region, apply_region
from .jpeg import MCU
from .wire.protocol import AudioFrame, SessionParams, encode_frame

DEFAULT_JPEG_QUALITY = 85


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """BGR uint8 -> baseline JPEG (libjpeg-turbo inside OpenCV)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class StageTimes:
    """Seconds spent per stage, summed over frames: the stages of the ``lipsync_stage_seconds``
    metric, by the same names."""

    frames: int = 0
    features: float = 0.0  # the engine's audio front end (engines that report it)
    engine: float = 0.0  # the rest of the mouth: rules and recognizer, or waiting for the shared model
    compose: float = 0.0  # drawing the face region
    encode: float = 0.0  # JPEG (or raw copy) and message packing
    send: float = 0.0  # handing the message to the websocket (measured by the server)

    def stages(self) -> dict[str, float]:
        return {"features": self.features, "engine": self.engine, "compose": self.compose, "encode": self.encode, "send": self.send}

    @property
    def total(self) -> float:
        """Rendering time (sending excluded)."""
        return self.features + self.engine + self.compose + self.encode


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
        """The complete binary message for *frame*: a weight-free engine's (in a worker thread)."""
        t0 = time.perf_counter()
        ref = self.character.reference(frame.index)
        if not frame.window.any() and self.stream.silent():
            return self._rest(frame, ref, t0)
        mouth = self.stream.mouth(frame, ref)
        t1 = time.perf_counter()
        if isinstance(mouth, MouthShape):
            self.last_shape = mouth
        return self._draw(frame, ref, mouth, None, t0, t1)

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
        """A learned engine's frame: its mouth (the model's input) made here, the output from the
        shared model (in a batch with other sessions' frames), drawn and encoded in a worker
        thread.

        *late*: the frame would reach the client after its playing time; rather than fall
        further behind, it keeps the last generated mouth (counted in ``held_frames``).
        """
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        ref = self.character.reference(frame.index)
        if not frame.window.any() and self.stream.silent():
            return await loop.run_in_executor(executor, self._rest, frame, ref, t0)
        assert self._handle is not None
        mouth = self.stream.mouth(frame, ref)
        assert isinstance(mouth, LearnedMouth), f"{self.engine.name} is a learned engine: its mouths are LearnedMouth"
        generated: Any = None
        if mouth.strength <= 0.0:
            pass  # near-silence: the reference's closed lips, no model call
        elif late and self._last_output is not None:
            self.held_frames += 1
            generated = self._last_output
        else:
            request = self.engine.service.submit(self._handle, mouth.model_input)
            try:
                generated = self._last_output = await asyncio.wrap_future(request)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not request.cancelled() or (task is not None and task.cancelling()):
                    raise  # the session itself is being torn down
                # SKIP dropped the request; the frame (its audio already taken) still goes out,
                # with the last generated mouth, or as the reference frame before there is one
                self.held_frames += 1
                generated = self._last_output
        t1 = time.perf_counter()
        return await loop.run_in_executor(executor, self._draw, frame, ref, mouth, generated, t0, t1)

    def _draw(self, frame: AudioFrame, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any, t0: float, t1: float) -> bytes:
        region = self.stream.draw(ref, mouth, generated)
        return self._encode(frame, ref, region, t0, t1)

    def _rest(self, frame: AudioFrame, ref: ReferenceFrame, t0: float) -> bytes:
        """A frame of digital silence: the rest picture, encoded once per reference frame."""
        self.last_shape = CLOSED
        t1 = time.perf_counter()
        kept = self.character.jpegs.rest(self.engine.name, ref.index, self.jpeg_quality) if self.params.is_jpg else None
        if kept is not None:  # another session drew it meanwhile
            return self._message(frame, kept, t0, t1, t1)
        region = self.stream.draw_rest(ref)
        return self._encode(frame, ref, region, t0, t1, rest=True)

    def _encode(self, frame: AudioFrame, ref: ReferenceFrame, region: Region | None, t0: float, t1: float, rest: bool = False) -> bytes:
        """The frame message with *region* composited on the reference frame, the one path for
        every engine. JPEG: only the region's rows are encoded; the rest of the picture is the
        reference frame's, encoded once for every session of this character."""
        t2 = time.perf_counter()
        if self.params.is_jpg:
            reference = self.character.jpegs.get(ref.index, ref.image, self.jpeg_quality)
            data = reference.data if region is None else reference.splice(region[0] // MCU, region[1], self.jpeg_quality)
            if rest:
                self.character.jpegs.keep_rest(self.engine.name, ref.index, self.jpeg_quality, data)
        else:
            data = apply_region(ref.image, region).tobytes()
        return self._message(frame, data, t0, t1, t2)

    def _message(self, frame: AudioFrame, data: bytes, t0: float, t1: float, t2: float) -> bytes:
        """The frame message around the encoded picture; the stage times are added up."""
        message = encode_frame(frame.index, data, frame.pcm if self.params.sync_audio else None)
        t3 = time.perf_counter()
        times = self.times
        times.frames += 1
        features = self.stream.feature_seconds - times.features  # this frame's share of t1 - t0
        times.features = self.stream.feature_seconds
        times.engine += max(0.0, t1 - t0 - features)
        times.compose += t2 - t1
        times.encode += t3 - t2
        return message
