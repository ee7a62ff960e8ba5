"""One session's behaviour as a sans-I/O state machine.

The server feeds it messages with :meth:`Session.receive` and asks :meth:`Session.next_step` what
to do now: render a frame, wait (until a time, or until the next message), finish, or fail.
Time is passed in, never read, so pacing, limits and idle frames are tested with a fake clock.

Pacing (the protocol's section 3; docs/protocol.md): frame *k* is released no earlier than ``t0 + k/30 - lead``, where
``t0`` is when the first frame was ready. When a frame becomes ready later than its playing time
``t0 + k/30`` because its audio came late (the client stopped sending for a while), ``t0`` moves so that frame *k* is due
``lead`` ago: the client gets ``lead`` of frames at once to refill its buffer, then 30 fps again.
Only released frames leave the audio FIFO, so ``SKIP`` drops everything not yet shown.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass

from .protocol import FPS, SAMPLE_RATE, AudioFrame, AudioFramer, Control, ErrorKind, ProtocolError, SessionParams, frame_length, parse_control

log = logging.getLogger(__name__)

DEFAULT_LEAD = 0.5
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB, about 33 s of audio in one message
STARVE_GRACE = 0.3  # seconds past its playing time before a frame goes out without its audio


@dataclass(frozen=True)
class Limits:
    """Server-side limits; a client's ``maxSessionLength``/``maxIdleTime`` can only lower them."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_session_length: float | None = 3600.0
    max_idle_time: float | None = 300.0
    lead: float = DEFAULT_LEAD
    #: Audio received but not yet rendered past which the server stops reading the client's socket
    #: (TCP then holds the client's sends back): memory stays bounded whatever the length. Offline
    #: sessions need only a few seconds; real-time ones keep reading through long bursts (TTS) so
    #: that a SKIP behind them is read at once.
    offline_buffer_seconds: float = 5.0
    realtime_buffer_seconds: float = 600.0


# --- what the session asks the I/O shell to do --------------------------------------------------


@dataclass(frozen=True)
class Render:
    """Render this frame and send it now."""

    frame: AudioFrame
    audio_at: float  # when the last of the frame's own audio arrived (for latency metrics)


@dataclass(frozen=True)
class Wait:
    """Nothing to do until *until* (a clock time) or the next message, whichever comes first."""

    until: float | None


@dataclass(frozen=True)
class Finish:
    """Everything is sent: send text ``DONE`` and close normally."""


@dataclass(frozen=True)
class Fail:
    """Send the JSON error and close with the kind's close code."""

    kind: ErrorKind
    detail: str


Step = Render | Wait | Finish | Fail


class State(enum.Enum):
    """Where a session is: streaming, draining what is left after DONE, or closed."""
    STREAMING = "streaming"
    DRAINING = "draining"  # DONE received: sending what is left
    CLOSED = "closed"


def _min_limit(server: float | None, client: float | None) -> float | None:
    values = [v for v in (server, client) if v is not None]
    return min(values) if values else None


class Session:
    """The state of one LipsyncStream session after its first message."""

    def __init__(
        self,
        params: SessionParams,
        now: float,
        lookahead: int = 0,
        context: int = 0,
        limits: Limits = Limits(),
    ) -> None:
        self.params = params
        self.limits = limits
        self.framer = AudioFramer(lookahead, context)
        self.state = State.STREAMING
        self.started = now
        self.last_message = now  # last message from the client, or last frame of its audio released
        self.t0: float | None = None
        self.max_session_length = _min_limit(limits.max_session_length, params.max_session_length)
        self.max_idle_time = _min_limit(limits.max_idle_time, params.max_idle_time)
        self.frames_released = 0
        self.idle_frames = 0
        self.samples_received = 0
        self.samples_skipped = 0
        self.peak_pending_samples = 0  # the most audio ever waiting to be rendered (bounded by flow control)
        self.skips = 0  # SKIP messages taken (the I/O shell also drops work it has queued)
        self._failure: Fail | None = None
        self._starved = False  # the last step waited for audio, not for the clock
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()  # (FIFO end offset, time)

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # --- input -----------------------------------------------------------------------------------

    def receive(self, message: bytes | str, now: float) -> None:
        """Take one client message. Never raises: a bad message makes the next step a Fail."""
        if self.closed or self._failure is not None:
            return
        self.last_message = now
        try:
            if len(message) > self.limits.max_message_bytes:
                raise ProtocolError(
                    ErrorKind.MESSAGE_TOO_BIG,
                    f"message of {len(message)} bytes exceeds the limit of {self.limits.max_message_bytes}; send audio in smaller chunks",
                )
            if isinstance(message, str):
                self._control(parse_control(message))
            else:
                self.framer.push(message)
                self.samples_received += len(message) // 2
                self.peak_pending_samples = max(self.peak_pending_samples, self.framer.pending_samples)
                self._arrivals.append((self.framer.pushed_bytes, now))
        except ProtocolError as exc:
            self._failure = Fail(exc.kind, exc.detail)

    def _control(self, control: Control) -> None:
        if control is Control.DONE:
            if self.state is State.STREAMING:
                self.framer.flush()
                self.state = State.DRAINING
        elif control is Control.SKIP:
            if self.state is State.DRAINING:
                raise ProtocolError(ErrorKind.BAD_REQUEST, "SKIP after DONE")
            self.samples_skipped += self.framer.skip()
            self.skips += 1

    @property
    def buffer_seconds(self) -> float:
        return self.limits.realtime_buffer_seconds if self.params.realtime else self.limits.offline_buffer_seconds

    @property
    def reading_paused(self) -> bool:
        """True while the I/O shell should not read the client's next message: enough audio is
        waiting to be rendered. Each released frame can make room (ask again after it). Never
        before the next frame and the engine's lookahead are in: that frame could not be made."""
        enough = max(self.buffer_seconds * SAMPLE_RATE, frame_length(self.framer.next_index) + self.framer.lookahead)
        return self.state is State.STREAMING and self._failure is None and self.framer.pending_samples >= enough

    def fail(self, kind: ErrorKind, detail: str) -> None:
        """Record a failure found by the I/O shell (rendering broke, say)."""
        if self._failure is None and not self.closed:
            self._failure = Fail(kind, detail)

    # --- output ----------------------------------------------------------------------------------

    def play_time(self, k: int) -> float | None:
        """When frame *k* plays at the client (None: not paced in real time, or not started)."""
        if not self.params.realtime or self.t0 is None:
            return None
        return self.t0 + k / FPS

    def release_time(self, k: int) -> float | None:
        """When frame *k* may be sent (None: right away)."""
        if not self.params.realtime or self.t0 is None:
            return None
        return self.t0 + k / FPS - self.limits.lead

    def next_step(self, now: float) -> Step:
        """What to do now. Render steps must be carried out (the frame has left the FIFO)."""
        if self.closed:
            raise RuntimeError("session is closed")
        if self._failure is not None:
            self.state = State.CLOSED
            return self._failure
        deadlines: list[float] = []
        if self.max_session_length is not None:
            end = self.started + self.max_session_length
            if now >= end:
                return self._fail_now(ErrorKind.LIMIT, f"session reached maxSessionLength of {self.max_session_length:g} s")
            deadlines.append(end)
        if self.max_idle_time is not None and self.state is State.STREAMING:
            end = self.last_message + self.max_idle_time
            if now >= end:
                return self._fail_now(ErrorKind.LIMIT, f"no message from the client for maxIdleTime of {self.max_idle_time:g} s")
            deadlines.append(end)

        framer = self.framer
        k = framer.next_index
        if framer.ready():
            return self._release(k, now, force=False, deadlines=deadlines)
        if self.state is State.DRAINING:  # flushed and nothing left
            self.state = State.CLOSED
            return Finish()
        if self.params.realtime and self.t0 is not None and framer.has_full_frame():
            # Only lookahead is missing: do not hold the frame for audio that may never come.
            due = self._starve_time(k)
            if now >= due:
                return self._release(k, now, force=True, deadlines=deadlines)
            deadlines.append(due)
        elif self.params.handle_silence and self.params.realtime:
            if self.t0 is None:
                self.t0 = self.started
            due = self._starve_time(k)
            if now >= due:
                framer.pad_next_with_silence()
                self._arrivals.append((framer.pushed_bytes, now))
                self.idle_frames += 1
                return self._release(k, now, force=True, deadlines=deadlines, idle=True)
            deadlines.append(due)
        self._starved = True
        return Wait(min(deadlines) if deadlines else None)

    def _starve_time(self, k: int) -> float:
        """When frame *k* is filled with what there is (silence, no lookahead).

        A client streaming in real time delivers frame *k*'s audio about when the frame should
        play, never a lead ahead, so only a frame that is overdue by more than a chunk's worth of
        network jitter means the client has really gone quiet.
        """
        assert self.t0 is not None
        return self.t0 + k / FPS + STARVE_GRACE

    def _release(self, k: int, now: float, force: bool, deadlines: list[float], idle: bool = False) -> Step:
        if self.params.realtime:
            if self.t0 is None:
                self.t0 = now
            elif self._starved and not force and now > self.t0 + k / FPS:
                log.debug("frame %d ready %.3f s late; re-anchoring pacing", k, now - self.t0 - k / FPS)
                self.t0 = now - k / FPS
            self._starved = False
            due = self.release_time(k)
            assert due is not None
            if now < due:
                return Wait(min([due, *deadlines]))
        self.frames_released += 1
        if not idle:  # the client's own audio playing: the session is not idle
            self.last_message = max(self.last_message, now)
        frame = self.framer.pop(force=force)
        end = self.framer.consumed_bytes
        audio_at = now
        while self._arrivals and self._arrivals[0][0] < end:
            self._arrivals.popleft()
        if self._arrivals:
            audio_at = min(now, self._arrivals[0][1])
        return Render(frame, audio_at)

    def _fail_now(self, kind: ErrorKind, detail: str) -> Fail:
        self.state = State.CLOSED
        return Fail(kind, detail)
