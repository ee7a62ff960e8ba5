"""A character's source video with bounded memory: decoded one frame at a time
(:class:`VideoReader`: size checked before anything is decoded, huge frames scaled down), the
fixed square crop around the face (never stretched), face boxes found while streaming, and the
512x512 frames written to a ``.npy`` file one at a time (:class:`FrameFile`)."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Self

import av
import cv2
import numpy as np

from ..wire.protocol import FPS, FRAME_HEIGHT, FRAME_WIDTH
from .character_errors import CharacterError
from .faces import DETECT_MAX_SIDE, FaceDetector, boxes_from_detections

log = logging.getLogger(__name__)

MAX_FRAMES = 30 * FPS  # 30 s; longer videos are cut (0.75 MiB a frame decoded)
MAX_DECODE_SIDE = 1280  # larger videos are scaled down while decoding (at most 4.7 MiB a frame)
MAX_SOURCE_PIXELS = 4096 * 4096  # larger frames are refused before decoding (FFmpeg alone: 25 MB each)
FACE_SCALE = 3.0  # the crop is this many face sizes wide, when the video allows
FACE_CENTRE_HEIGHT = 0.45  # where the face centre sits in the crop, from the top


class VideoReader:
    """A video decoded one frame at a time: never more than a frame or two in memory.

    Opening checks the stream before anything is decoded: it must be a video, and its frames at
    most MAX_SOURCE_PIXELS. Frames come scaled down to MAX_DECODE_SIDE (uniformly), at most
    *max_frames* of them; a frame whose size differs from the first is an error; a damaged tail
    ends the video with a warning. Use as a context manager.
    """

    def __init__(self, path: Path, max_frames: int = MAX_FRAMES) -> None:
        self.path = path
        self.max_frames = max_frames
        self.count = 0  # frames yielded so far
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise CharacterError(f"cannot decode video {path.name}: {exc}") from None
        try:
            if not self._container.streams.video:
                raise CharacterError(f"{path.name} has no video stream")
            self._stream = self._container.streams.video[0]
            w, h = int(self._stream.codec_context.width or 0), int(self._stream.codec_context.height or 0)
            if w <= 0 or h <= 0:
                raise CharacterError(f"video {path.name} does not declare its frame size")
            if w * h > MAX_SOURCE_PIXELS:
                raise CharacterError(f"video {path.name} is {w}x{h}: more than the {MAX_SOURCE_PIXELS // 10**6} megapixels a character video may have; scale it down")
        except BaseException:
            self._container.close()
            raise
        self.source_width, self.source_height = w, h
        self.scale = min(1.0, MAX_DECODE_SIDE / max(w, h))
        self.width, self.height = (w, h) if self.scale == 1.0 else (2 * round(w * self.scale / 2), 2 * round(h * self.scale / 2))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    @property
    def cut(self) -> bool:
        """The video was (or may have been) longer than *max_frames*."""
        return self.count >= self.max_frames

    def frames(self) -> Iterator[av.VideoFrame]:
        """The frames, at (width, height), in order. Raises CharacterError when there are none."""
        self._stream.thread_type = "AUTO"
        name = self.path.name
        try:
            for frame in self._container.decode(self._stream):
                if (frame.width, frame.height) != (self.source_width, self.source_height):
                    raise CharacterError(
                        f"video {name} changes frame size at frame {self.count} ({self.source_width}x{self.source_height} to {frame.width}x{frame.height}); a character video keeps one size"
                    )
                if self.scale < 1.0:  # huge videos: they are cropped to a face anyway
                    frame = frame.reformat(width=self.width, height=self.height)
                self.count += 1
                yield frame
                if self.count >= self.max_frames:
                    log.info("%s: using the first %d frames", name, self.max_frames)
                    break
        except (av.FFmpegError, OSError, ValueError) as exc:
            if not self.count:
                raise CharacterError(f"cannot decode video {name}: {exc}") from None
            log.warning("%s is damaged after frame %d (%s); using the frames before it", name, self.count, exc)
        if not self.count:
            raise CharacterError(f"video {name} has no frames")


def decode_video(path: Path, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """All frames (up to *max_frames*) as BGR arrays, all in memory (a short video: the embedded
    character, tools); any decoding problem is a CharacterError."""
    with VideoReader(path, max_frames) as reader:
        return [frame.to_ndarray(format="bgr24") for frame in reader.frames()]


def face_crop(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int]:
    """A fixed square (x0, y0, side) around the face, inside the frame."""
    b = boxes.astype(np.float64)
    face = float(np.median(np.maximum(b[:, 1] - b[:, 0], b[:, 3] - b[:, 2])))
    cx = float(np.median(0.5 * (b[:, 2] + b[:, 3])))
    cy = float(np.median(0.5 * (b[:, 0] + b[:, 1])))
    side = int(round(min(min(width, height), max(FACE_SCALE * face, 64.0))))
    x0 = int(round(np.clip(cx - side / 2, 0, width - side)))
    y0 = int(round(np.clip(cy - FACE_CENTRE_HEIGHT * side, 0, height - side)))
    return x0, y0, side


def crop_square(frame: np.ndarray, crop: tuple[int, int, int]) -> np.ndarray:
    """The (x0, y0, side) square of *frame*, scaled to 512x512."""
    x0, y0, side = crop
    square = frame[y0 : y0 + side, x0 : x0 + side]
    if side == FRAME_WIDTH:
        return square
    return cv2.resize(square, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA if side > FRAME_WIDTH else cv2.INTER_CUBIC)


def square_boxes(boxes: np.ndarray, crop: tuple[int, int, int]) -> np.ndarray:
    """Face boxes (y1, y2, x1, x2) of the source frame in the 512x512 crop."""
    x0, y0, side = crop
    scale = FRAME_WIDTH / side
    b = boxes.astype(np.float64)
    new = np.stack([(b[:, 0] - y0) * scale, (b[:, 1] - y0) * scale, (b[:, 2] - x0) * scale, (b[:, 3] - x0) * scale], axis=1)
    return np.clip(np.round(new), 0, FRAME_WIDTH).astype(np.int32)


def detect_faces_streaming(video: Path, stride: int = 3, max_frames: int = MAX_FRAMES, seconds: float | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Face boxes for every frame of *video* (decoded coordinates), holding no frames: of its
    first *max_frames*, or of those that start in its first *seconds*.

    Detection runs on every *stride*-th frame and the last one, each decoded straight to the
    detector's size; the rest is interpolated (:func:`boxes_from_detections`).
    """
    found: dict[int, tuple[int, int, int, int]] = {}
    searched = 0
    start: float | None = None
    with VideoReader(video, max_frames) as reader, FaceDetector() as detector:
        s = min(1.0, DETECT_MAX_SIDE / max(reader.width, reader.height))
        small_w, small_h = max(2, round(reader.width * s)), max(2, round(reader.height * s))

        def detect(i: int, frame: av.VideoFrame) -> None:
            nonlocal searched
            searched += 1
            box = detector.detect(frame.to_ndarray(width=small_w, height=small_h, format="bgr24"))
            if box is not None:
                found[i] = (round(box[0] / s), round(box[1] / s), round(box[2] / s), round(box[3] / s))

        last: tuple[int, av.VideoFrame] | None = None
        count = 0
        for i, frame in enumerate(reader.frames()):
            if seconds is not None and frame.time is not None:
                start = frame.time if start is None else start
                if frame.time - start >= seconds:
                    break
            count = i + 1
            if progress:
                progress(1)
            if i % stride:
                last = (i, frame)
            else:
                last = None
                detect(i, frame)
        if last is not None:
            detect(*last)
        return boxes_from_detections(found, count, reader.width, reader.height, searched)


class FrameFile:
    """512x512 frames appended one at a time to a ``.npy`` file, never all in memory.

    The header is written for *max_frames* first and rewritten with the real count at the end
    (headers are padded to 64 bytes, so both have the same length). Until :meth:`finish`, the
    file has a temporary name carrying the process and thread, and :meth:`abort` removes it.
    """

    def __init__(self, path: Path, max_frames: int = MAX_FRAMES) -> None:
        self.path = path
        self.tmp = temporary_twin(path)
        self.count = 0
        self._header_len = len(self._header(max_frames))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 - closed by finish() or abort()
        self._file.write(bytes(self._header_len))

    @staticmethod
    def _header(n: int) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (n, FRAME_HEIGHT, FRAME_WIDTH, 3)})
        return buf.getvalue()

    def append(self, frame: np.ndarray) -> None:
        assert self._file is not None and frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and frame.dtype == np.uint8
        self._file.write(np.ascontiguousarray(frame).data)
        self.count += 1

    def finish(self) -> None:
        assert self._file is not None
        header = self._header(self.count)
        if len(header) != self._header_len:
            raise CharacterError(f"internal: .npy header length changed ({len(header)} != {self._header_len})")
        self._file.seek(0)
        self._file.write(header)
        self._file.close()
        self._file = None
        self.tmp.replace(self.path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tmp.unlink(missing_ok=True)


def temporary_twin(path: Path) -> Path:
    """Where *path* is written before it is renamed into place: a name of this process and thread
    (workers share the cache), ending like *path* (``np.save`` keeps a ``.npy`` name as it is)."""
    return path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
