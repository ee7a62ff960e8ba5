"""The LipsyncStream wire protocol, sans-I/O.

Pure functions and small classes: parse the first message, cut PCM16 audio into 30 fps frames,
encode and decode frame messages, and name the errors. Nothing here touches a socket, so the
server, the clients and the tests all share exactly one definition of every byte
(docs/protocol.md describes every byte and every decision).
"""

from __future__ import annotations

import enum
import json
import math
import struct
import urllib.parse
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
FPS = 30
BYTES_PER_SAMPLE = 2
BYTES_PER_SECOND = SAMPLE_RATE * BYTES_PER_SAMPLE  # of PCM16 mono
FRAME_WIDTH = 512
FRAME_HEIGHT = 512
RAW_FRAME_BYTES = FRAME_WIDTH * FRAME_HEIGHT * 3

VIDEO_TAG = b"VIDEO"
AUDIO_TAG = b"AUDIO"
_INT = struct.Struct("<i")
_VIDEO_META = struct.Struct("<iiii")  # L, frame index, width, height

DEFAULT_CHARACTER = "default"


def frame_start(k: int) -> int:
    """First sample of output frame *k*: round(k * 16000 / 30), exact in integers."""
    # k*1600/3 has a fractional part of 0, 1/3 or 2/3, so round-half rules never matter.
    return (2 * k * SAMPLE_RATE + FPS) // (2 * FPS)


def frame_length(k: int) -> int:
    """Samples in output frame *k*: 533 or 534."""
    return frame_start(k + 1) - frame_start(k)


def frames_for_samples(n_samples: int) -> int:
    """How many frames a stream of *n_samples* becomes once flushed (the last one may be partial)."""
    if n_samples <= 0:
        return 0
    k = max(0, n_samples * FPS // SAMPLE_RATE - 1)
    while frame_start(k + 1) < n_samples:
        k += 1
    return k + 1


# --- errors -------------------------------------------------------------------------------------


class ErrorKind(str, enum.Enum):
    """Fatal error kinds, each with the websocket close code that follows the JSON error text."""

    BAD_REQUEST = "bad_request"
    BAD_AUDIO = "bad_audio"
    MESSAGE_TOO_BIG = "message_too_big"
    CHARACTER = "character_error"
    LIMIT = "limit_exceeded"
    CAPACITY = "capacity"
    UNAUTHORIZED = "unauthorized"
    INTERNAL = "internal_error"
    GOING_AWAY = "going_away"  # the server is shutting down (after its drain timeout)

    @property
    def close_code(self) -> int:
        return _CLOSE_CODES[self]


_CLOSE_CODES = {
    ErrorKind.BAD_REQUEST: 1008,
    ErrorKind.BAD_AUDIO: 1007,
    ErrorKind.MESSAGE_TOO_BIG: 1009,
    ErrorKind.CHARACTER: 1011,
    ErrorKind.LIMIT: 1008,
    ErrorKind.CAPACITY: 1013,  # try again later
    ErrorKind.UNAUTHORIZED: 1008,
    ErrorKind.INTERNAL: 1011,
    ErrorKind.GOING_AWAY: 1001,
}


class ProtocolError(Exception):
    """A fatal problem with what the client sent; the session answers it and closes."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


def error_message(kind: ErrorKind, detail: str) -> str:
    """The text message sent before closing: ``{"error": kind, "detail": ...}``."""
    return json.dumps({"error": kind.value, "detail": detail})


# --- first message ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionParams:
    """What the client asked for in its first message, validated."""

    video_reference_url: str = DEFAULT_CHARACTER
    face_det_results: str | None = None
    is_jpg: bool = True
    sync_audio: bool = True
    handle_silence: bool = False
    max_session_length: float | None = None
    max_idle_time: float | None = None
    realtime: bool = True
    #: from ``POST /startAudioToVideoSession``: the session then uses the fields stored with it
    session_token: str | None = None


_BOOL_FIELDS = {
    "isJPG": "is_jpg",
    "syncAudio": "sync_audio",
    "handleSilence": "handle_silence",
    "realtime": "realtime",
}
_SECONDS_FIELDS = {"maxSessionLength": "max_session_length", "maxIdleTime": "max_idle_time"}
KNOWN_FIELDS = frozenset({"video_reference_url", "face_det_results", "session_token", *_BOOL_FIELDS, *_SECONDS_FIELDS})
MAX_TOKEN_CHARS = 8192


def _bad(detail: str) -> ProtocolError:
    return ProtocolError(ErrorKind.BAD_REQUEST, detail)


MAX_REFERENCE_CHARS = 4096
MAX_NAME_BYTES = 255  # the longest file name a file system takes (NAME_MAX)
MAX_INT_DIGITS = 40  # longer integers in the first message are refused by name, never converted


class _LongInt(str):
    """An integer literal too long to be a sensible value (kept as text, never converted)."""


def _parse_int(text: str) -> int | _LongInt:
    return _LongInt(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


def _shown(value: Any) -> str:
    if isinstance(value, _LongInt):
        return f"a {len(value.lstrip('-'))}-digit integer"
    try:
        return json.dumps(value)[:80]
    except ValueError:
        return repr(value)[:80]


def validate_reference(wire: str, value: str) -> str:
    """A character reference (URL or path) that can be looked up, or a bad_request naming *wire*.

    Whether it exists or may be used is the character store's question; this checks only that it
    is text a URL or a file name can be: no control characters, valid Unicode, sane lengths, and
    for http(s) a host and a port in range.
    """
    if len(value) > MAX_REFERENCE_CHARS:
        raise _bad(f"field '{wire}' is {len(value)} characters long; at most {MAX_REFERENCE_CHARS}")
    for i, ch in enumerate(value):
        if ord(ch) < 32 or ord(ch) == 127:
            raise _bad(f"field '{wire}' contains a control character ({ch!r} at position {i})")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise _bad(f"field '{wire}' is not valid Unicode (a lone surrogate at position {i})")
    try:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme.lower() in ("http", "https"):
            if not parts.hostname:
                raise _bad(f"field '{wire}' is a URL without a host")
            parts.port  # noqa: B018 - raises ValueError when out of range or not a number
            return value
    except ValueError as exc:
        raise _bad(f"field '{wire}' is not a valid URL: {exc}") from None
    path = urllib.parse.unquote(parts.path) if parts.scheme.lower() == "file" else value
    for name in path.split("/"):
        if len(name.encode()) > MAX_NAME_BYTES:
            raise _bad(f"field '{wire}' has a path component of {len(name.encode())} bytes; file names have at most {MAX_NAME_BYTES}")
    return value


def parse_first_message(data: str | bytes) -> SessionParams:
    """Validate the first message; an error names the field that is wrong."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("first message must be a UTF-8 JSON object, got undecodable bytes") from None
    try:
        obj: Any = json.loads(data, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise _bad(f"first message is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise _bad("first message is not a flat JSON object: it is nested too deeply") from None
    if not isinstance(obj, dict):
        raise _bad(f"first message must be a JSON object, got {type(obj).__name__}")

    fields: dict[str, Any] = {}
    for wire in ("video_reference_url", "face_det_results"):
        value = obj.get(wire)
        if value is not None and (not isinstance(value, str) or isinstance(value, _LongInt)):
            raise _bad(f"field '{wire}' must be a string or null, got {_shown(value)}")
        fields[wire] = validate_reference(wire, value.strip()) if value and value.strip() else None
    fields["video_reference_url"] = fields["video_reference_url"] or DEFAULT_CHARACTER

    token = obj.get("session_token")
    if token is not None:
        if not isinstance(token, str) or isinstance(token, _LongInt) or not token.isascii() or not 0 < len(token) <= MAX_TOKEN_CHARS:
            raise _bad(f"field 'session_token' must be the token string from POST /startAudioToVideoSession, got {_shown(token)}")
        fields["session_token"] = token

    for wire, attr in _BOOL_FIELDS.items():
        value = obj.get(wire)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise _bad(f"field '{wire}' must be true or false, got {_shown(value)}")
        fields[attr] = value

    for wire, attr in _SECONDS_FIELDS.items():
        value = obj.get(wire)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise _bad(f"field '{wire}' must be a positive number of seconds, got {_shown(value)}")
        fields[attr] = float(value)

    return SessionParams(**fields)


def first_message(params: SessionParams) -> str:
    """The JSON a client sends for *params* (the inverse of :func:`parse_first_message`)."""
    obj: dict[str, Any] = {
        "video_reference_url": params.video_reference_url,
        "face_det_results": params.face_det_results,
        "isJPG": params.is_jpg,
        "syncAudio": params.sync_audio,
    }
    if params.handle_silence:
        obj["handleSilence"] = True
    if not params.realtime:
        obj["realtime"] = False
    if params.max_session_length is not None:
        obj["maxSessionLength"] = params.max_session_length
    if params.max_idle_time is not None:
        obj["maxIdleTime"] = params.max_idle_time
    if params.session_token is not None:
        obj["session_token"] = params.session_token
    return json.dumps(obj)


# --- text controls ------------------------------------------------------------------------------


class Control(str, enum.Enum):
    """The client's text messages besides the first: end of audio, and skipping what is queued."""
    DONE = "DONE"
    SKIP = "SKIP"


def parse_control(text: str) -> Control:
    """A client's text message after the first one: ``DONE`` or ``SKIP``."""
    try:
        return Control(text.strip())
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise _bad(f"unknown text message {shown!r}: expected DONE or SKIP (audio goes in binary messages)") from None


# --- frame messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameMessage:
    """One decoded server frame message."""

    index: int
    width: int
    height: int
    image: bytes
    audio: bytes | None

    def pcm(self) -> np.ndarray:
        """The frame's audio as int16 samples (empty when syncAudio is off)."""
        return np.frombuffer(self.audio or b"", dtype="<i2")


def encode_frame(index: int, image: bytes, audio: bytes | None, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> bytes:
    """``VIDEO`` L index width height image [``AUDIO`` A pcm], all ints int32 little-endian."""
    parts = [VIDEO_TAG, _VIDEO_META.pack(12 + len(image), index, width, height), image]
    if audio is not None:
        parts += [AUDIO_TAG, _INT.pack(len(audio)), audio]
    return b"".join(parts)


def decode_frame(data: bytes) -> FrameMessage:
    """Parse a frame message strictly: every length must add up to the message's size."""
    view = memoryview(data)
    if len(view) < 21 or bytes(view[:5]) != VIDEO_TAG:
        raise ValueError("frame message must start with b'VIDEO' and a 16-byte header")
    length, index, width, height = _VIDEO_META.unpack_from(view, 5)
    end = 9 + length
    if length < 12 or end > len(view):
        raise ValueError(f"video block length {length} does not fit a {len(view)}-byte message")
    image = bytes(view[21:end])
    audio: bytes | None = None
    if end < len(view):
        if len(view) < end + 9 or bytes(view[end : end + 5]) != AUDIO_TAG:
            raise ValueError("bytes after the video block must be an AUDIO block")
        (n_audio,) = _INT.unpack_from(view, end + 5)
        if n_audio < 0 or end + 9 + n_audio != len(view):
            raise ValueError(f"audio block length {n_audio} does not match the message size")
        audio = bytes(view[end + 9 :])
    return FrameMessage(index, width, height, image, audio)


# --- audio framing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFrame:
    """The audio of one output frame, plus the surrounding samples an engine may look at."""

    index: int
    pcm: bytes  # this frame's own samples, exactly as received (shorter only for the final frame)
    window: np.ndarray  # int16: `context` samples before, the frame (zero-padded), `lookahead` after
    start: int = 0  # position of window[0] in the stream (samples; SKIP moves it on, never back)
    valid: int = 0  # window[:valid] is real audio; the rest was not there yet and reads as zeros
    epoch: int = 0  # bumped by SKIP: the context before the frame no longer sits at `start`


class AudioFramer:
    """FIFO of received PCM16 that releases frames on the 30 fps grid.

    Frame *k* owns output samples ``[frame_start(k), frame_start(k+1))``. A frame is ready once its
    samples and the engine's lookahead have arrived, or once the stream is flushed. Samples that
    came before the frame are kept as context; missing context or lookahead reads as silence.
    """

    def __init__(self, lookahead: int = 0, context: int = 0) -> None:
        self.lookahead = lookahead
        self.context = context
        self.next_index = 0
        self.flushed = False
        self._fifo = bytearray()
        self._history = np.zeros(context, dtype=np.int16)
        self.pushed_bytes = 0  # ever appended (padding included)
        self.consumed_bytes = 0  # ever taken out (frames and skips)
        self.epoch = 0

    @property
    def pending_samples(self) -> int:
        return len(self._fifo) // BYTES_PER_SAMPLE

    def push(self, data: bytes) -> None:
        """Append a binary audio message; an odd byte count cannot be PCM16 and is refused."""
        if len(data) % BYTES_PER_SAMPLE:
            raise ProtocolError(ErrorKind.BAD_AUDIO, f"audio message of {len(data)} bytes: PCM16 needs an even number of bytes")
        if self.flushed:
            raise ProtocolError(ErrorKind.BAD_REQUEST, "audio received after DONE")
        self._fifo += data
        self.pushed_bytes += len(data)

    def flush(self) -> None:
        """No more audio will come: the last partial frame becomes ready."""
        self.flushed = True

    def skip(self) -> int:
        """Drop every sample not yet framed; returns how many were dropped."""
        dropped = self.pending_samples
        self.consumed_bytes += len(self._fifo)
        self._fifo.clear()
        if dropped:
            self.epoch += 1
        return dropped

    def pad_next_with_silence(self) -> int:
        """Complete the next frame with zeros (for idle frames); returns samples added."""
        missing = frame_length(self.next_index) - self.pending_samples
        if missing > 0:
            self._fifo += bytes(missing * BYTES_PER_SAMPLE)
            self.pushed_bytes += missing * BYTES_PER_SAMPLE
            return missing
        return 0

    def ready(self) -> bool:
        need = frame_length(self.next_index)
        have = self.pending_samples
        if self.flushed:
            return have > 0
        return have >= need + self.lookahead

    def has_full_frame(self) -> bool:
        return self.pending_samples >= frame_length(self.next_index)

    def pop(self, force: bool = False) -> AudioFrame:
        """Take the next frame. With *force*, lookahead that has not arrived reads as silence."""
        if not (force or self.ready()):
            raise RuntimeError("next frame is not ready")
        k = self.next_index
        n = frame_length(k)
        start = self.consumed_bytes // BYTES_PER_SAMPLE - self.context
        own_bytes = min(n, self.pending_samples) * BYTES_PER_SAMPLE
        if own_bytes == 0:
            raise RuntimeError("no audio for the next frame")
        ahead_bytes = min(len(self._fifo), (n + self.lookahead) * BYTES_PER_SAMPLE)
        ahead = np.frombuffer(bytes(self._fifo[:ahead_bytes]), dtype="<i2")
        window = np.zeros(self.context + n + self.lookahead, dtype=np.int16)
        window[: self.context] = self._history
        window[self.context : self.context + len(ahead)] = ahead
        pcm = bytes(self._fifo[:own_bytes])
        del self._fifo[:own_bytes]
        self.consumed_bytes += own_bytes
        if self.context:
            self._history = window[n : n + self.context].copy()
        self.next_index += 1
        return AudioFrame(k, pcm, window, start, self.context + len(ahead), self.epoch)
