"""``lipsync-stream play``: an OpenCV window and sound, in sync on the audio clock.

The network runs in a background thread (asyncio); the window runs in the main thread, as GUI
toolkits want. Each frame's audio goes to the sound device as it arrives; the frame itself is
shown when the device has played up to the frame's first sample (less the device's latency), so
picture and sound cannot drift apart. Playback starts once ``buffer`` frames are queued (a jitter
buffer, like the original clients' ``minimumChunkSize``); if the network falls behind, sound
stops and the picture holds until enough frames are back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from websockets.exceptions import ConnectionClosed

from ..wire.protocol import SAMPLE_RATE, FrameMessage, SessionParams
from .stream import AudioFeed, LipsyncClient, ServerError, decode_image

log = logging.getLogger(__name__)

INSTALL_HINT = "sound needs PyAudio: pip install 'lipsync-stream[player]' (on Debian, first: apt-get install portaudio19-dev)"


class AudioOut(Protocol):
    """A sound output that knows how many of the samples written to it have been played."""

    def write(self, pcm: bytes) -> None: ...
    def played(self) -> float:
        """Samples of real audio played so far, latency included."""
        ...

    def start(self) -> None: ...
    def close(self) -> None: ...
    def pending(self) -> int: ...


class _Ring:
    """Audio waiting to be played; underruns play silence and do not advance the clock."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.consumed = 0  # samples of real audio taken by the device

    def write(self, pcm: bytes) -> None:
        with self._lock:
            self._buf += pcm

    def take(self, n: int) -> bytes:
        with self._lock:
            real = bytes(self._buf[: 2 * n])
            del self._buf[: 2 * n]
            self.consumed += len(real) // 2
        return real + bytes(2 * n - len(real))

    def pending(self) -> int:
        with self._lock:
            return len(self._buf) // 2


class _RingOut:
    """What every output shares: audio waits in a ring until the device takes it."""

    def __init__(self) -> None:
        self._ring = _Ring()

    def write(self, pcm: bytes) -> None:
        self._ring.write(pcm)

    def pending(self) -> int:
        return self._ring.pending()


class NullAudioOut(_RingOut):
    """No sound device: a clock that consumes samples in real time (tests, ``--no-sound``)."""

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="null-audio", daemon=True)

    def _run(self) -> None:
        period, due = 0.01, time.monotonic()
        while not self._stop.is_set():
            due += period
            self._ring.take(int(SAMPLE_RATE * period))
            time.sleep(max(0.0, due - time.monotonic()))

    def played(self) -> float:
        return float(self._ring.consumed)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()


class PyAudioOut(_RingOut):
    """The default sound device through PyAudio (callback mode, 16 kHz mono int16)."""

    def __init__(self) -> None:
        try:
            import pyaudio
        except ImportError:
            raise RuntimeError(INSTALL_HINT) from None
        super().__init__()
        self._pa = pyaudio.PyAudio()
        self._stream = self._pa.open(
            format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE, output=True, frames_per_buffer=320,
            stream_callback=lambda _in, n, _t, _s: (self._ring.take(n), pyaudio.paContinue), start=False,
        )

    def played(self) -> float:
        # What left the ring is still in the device's buffer for the output latency.
        return self._ring.consumed - self._stream.get_output_latency() * SAMPLE_RATE

    def start(self) -> None:
        self._stream.start_stream()

    def close(self) -> None:
        self._stream.stop_stream()
        self._stream.close()
        self._pa.terminate()


class Microphone:
    """16 kHz mono capture into an :class:`AudioFeed` (PyAudio), 100 ms at a time."""

    def __init__(self, feed: AudioFeed) -> None:
        try:
            import pyaudio
        except ImportError:
            raise RuntimeError(INSTALL_HINT) from None
        self._feed = feed
        self._continue = pyaudio.paContinue
        self._pa = pyaudio.PyAudio()
        self._stream = self._pa.open(format=pyaudio.paInt16, channels=1, rate=SAMPLE_RATE, input=True, frames_per_buffer=1600, stream_callback=self._captured)

    def _captured(self, data: bytes, frames: int, time_info: object, status: int) -> tuple[None, int]:
        self._feed.put(data)
        return None, self._continue

    def close(self) -> None:
        self._stream.stop_stream()
        self._stream.close()
        self._pa.terminate()


@dataclass
class PlayStats:
    """What the player measured; ``skew`` is when a frame appeared minus when its audio began."""

    received: int = 0
    shown: int = 0
    dropped: int = 0
    order_ok: bool = True
    skews: list[float] = field(default_factory=list)  # seconds, per shown frame
    show_times: list[float] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict[str, float | int | bool | str | None]:
        sk = np.abs(np.asarray(self.skews)) if self.skews else np.zeros(1)
        span = (self.show_times[-1] - self.show_times[0]) if len(self.show_times) > 1 else 0.0
        return {
            "received": self.received,
            "shown": self.shown,
            "dropped": self.dropped,
            "order_ok": self.order_ok,
            "fps": (len(self.show_times) - 1) / span if span > 0 else 0.0,
            "skew_ms_p50": float(np.percentile(sk, 50) * 1000),
            "skew_ms_p95": float(np.percentile(sk, 95) * 1000),
            "skew_ms_max": float(sk.max() * 1000),
            "error": self.error,
        }


@dataclass
class _Queued:
    frame: FrameMessage
    start: int  # first sample of this frame's audio in the session's stream


class Player:
    """Receives frames on a background thread; ``run()`` shows them in the calling thread."""

    def __init__(self, url: str, params: SessionParams, out: AudioOut, buffer_frames: int = 6, window: str = "lipsync-stream", api_key: str | None = None) -> None:
        self.url, self.params, self.out, self.api_key = url, params, out, api_key
        self.buffer_frames = max(1, buffer_frames)
        self.window = window
        self.stats = PlayStats()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._quit = threading.Event()
        self._samples = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.feed: AudioFeed | None = None
        self._feed_ready = threading.Event()

    # --- network thread ---------------------------------------------------------------------

    def start_network(self, pcm: np.ndarray | None) -> threading.Thread:
        """Stream *pcm* (or, if None, whatever is put into ``self.feed``)."""
        thread = threading.Thread(target=lambda: asyncio.run(self._network(pcm)), name="network", daemon=True)
        thread.start()
        self._feed_ready.wait(10)
        return thread

    async def _network(self, pcm: np.ndarray | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.feed = AudioFeed()
        self._feed_ready.set()
        expected = 0
        try:
            async with LipsyncClient(self.url, self.params, self.api_key) as client:
                if pcm is not None:  # a file goes out at once: the server paces the frames
                    self.feed.put(pcm.astype("<i2").tobytes())
                    self.feed.close()
                pump = asyncio.create_task(client.pump(self.feed))
                try:
                    async for frame in client.frames():
                        if self._quit.is_set():
                            break
                        if frame.index != expected:
                            self.stats.order_ok = False
                        expected = frame.index + 1
                        audio = frame.audio or b""
                        with self._lock:
                            self._queue.append(_Queued(frame, self._samples))
                            self._samples += len(audio) // 2
                        self.out.write(audio)
                        self.stats.received += 1
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await pump
        except ServerError as exc:
            if not self._quit.is_set():
                self.stats.error = str(exc)
                log.error("server error: %s", exc)
        except OSError as exc:
            self.stats.error = f"cannot reach {self.url}: {exc}"
            log.error("%s", self.stats.error)
        finally:
            self._ended.set()

    def stop(self) -> None:
        """End the session from any thread (before or instead of :meth:`run`)."""
        self._quit.set()
        if self.feed is not None:
            self.feed.close()

    # --- display (calling thread) --------------------------------------------------------------

    def run(self, max_seconds: float | None = None) -> PlayStats:
        import cv2

        cv2.namedWindow(self.window, cv2.WINDOW_AUTOSIZE)
        cv2.imshow(self.window, np.zeros((512, 512, 3), np.uint8))
        started = False
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._quit.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    break
                with self._lock:
                    queued = len(self._queue)
                if not started and (queued >= self.buffer_frames or (self._ended.is_set() and queued)):
                    self.out.start()
                    started = True
                if started:
                    self._show_due(cv2)
                if self._ended.is_set() and not queued and self.out.pending() == 0:
                    break
                key = cv2.waitKey(4) & 0xFF
                if key in (ord("q"), 27):
                    log.info("quit by key")
                    break
                if cv2.getWindowProperty(self.window, cv2.WND_PROP_VISIBLE) < 1:
                    break
        except KeyboardInterrupt:
            log.info("interrupted")
        finally:
            self._quit.set()
            if self.feed is not None:
                self.feed.close()
            self.out.close()
            cv2.destroyWindow(self.window)
        return self.stats

    def _show_due(self, cv2) -> None:  # type: ignore[no-untyped-def]
        played = self.out.played()
        due: _Queued | None = None
        with self._lock:
            while self._queue and self._queue[0].start <= played:
                if due is not None:
                    self.stats.dropped += 1
                due = self._queue.popleft()
        if due is None:
            return
        cv2.imshow(self.window, decode_image(due.frame))
        now = self.out.played()
        self.stats.shown += 1
        self.stats.skews.append((now - due.start) / SAMPLE_RATE)
        self.stats.show_times.append(time.monotonic())


def write_stats(path: Path, stats: PlayStats) -> None:
    """Write what ``play`` measured (frames, rates, audio/video skew) as JSON."""
    path.write_text(json.dumps(stats.summary(), indent=2))
