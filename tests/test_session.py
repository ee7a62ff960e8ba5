"""The session state machine with a fake clock: pacing, DONE, SKIP, idle frames, limits."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync_stream.wire.protocol import ErrorKind, SessionParams, frame_length, frames_for_samples
from lipsync_stream.wire.session import Fail, Finish, Limits, Render, Session, Wait

LOOKAHEAD = 534


def speech(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, int(seconds * 16000), dtype=np.int16).astype("<i2").tobytes()


def drain(session: Session, now: float) -> list[Render]:
    """Every step that is due at *now*, stopping at the first non-render."""
    out = []
    while True:
        step = session.next_step(now)
        if not isinstance(step, Render):
            return out + [step]  # type: ignore[list-item]
        out.append(step)


def test_offline_session_renders_everything_then_finishes() -> None:
    s = Session(SessionParams(realtime=False), now=0.0, lookahead=LOOKAHEAD)
    audio = speech(1.23)
    s.receive(audio[:8000], 0.0)
    s.receive(audio[8000:], 0.0)
    s.receive("DONE", 0.0)
    steps = drain(s, 0.0)
    assert isinstance(steps[-1], Finish)
    renders = steps[:-1]
    assert len(renders) == frames_for_samples(len(audio) // 2)
    assert b"".join(r.frame.pcm for r in renders) == audio
    assert s.closed


def test_offline_session_waits_for_audio_without_deadline_when_unlimited() -> None:
    s = Session(SessionParams(realtime=False), now=0.0, lookahead=LOOKAHEAD, limits=Limits(max_session_length=None, max_idle_time=None))
    assert s.next_step(0.0) == Wait(None)


def test_realtime_pacing_releases_lead_then_30_fps() -> None:
    s = Session(SessionParams(), now=0.0, lookahead=LOOKAHEAD, limits=Limits(lead=0.5))
    s.receive(speech(5.0), 0.0)  # a TTS burst
    first = drain(s, 0.0)
    renders = [r for r in first if isinstance(r, Render)]
    assert [r.frame.index for r in renders] == list(range(16))  # k/30 - 0.5 <= 0
    wait = first[-1]
    assert isinstance(wait, Wait) and wait.until == pytest.approx(16 / 30 - 0.5)
    assert isinstance(s.next_step(wait.until - 1e-6), Wait)
    step = s.next_step(wait.until)
    assert isinstance(step, Render) and step.frame.index == 16
    # one second later, exactly 30 more frames are due
    later = drain(s, 1.0 + 16 / 30 - 0.5 + 1e-9)
    assert [r.frame.index for r in later if isinstance(r, Render)] == list(range(17, 47))


def test_pacing_re_anchors_after_a_stall() -> None:
    s = Session(SessionParams(), now=0.0, lookahead=0, limits=Limits(lead=0.5))
    s.receive(speech(1.0), 0.0)
    drain(s, 0.0)
    drain(s, 0.6)  # all 30 frames of the first second are out by 0.6 s
    assert s.framer.next_index == 30
    # the client goes quiet for 10 s, then sends two more seconds at once
    s.receive(speech(2.0, seed=1), 10.0)
    burst = [r for r in drain(s, 10.0) if isinstance(r, Render)]
    assert len(burst) == 16  # a lead's worth to refill the client's buffer, not 2 s at once
    assert s.t0 == pytest.approx(10.0 - 30 / 30)


def test_done_pads_last_frame_and_keeps_audio_exact() -> None:
    s = Session(SessionParams(), now=0.0, lookahead=LOOKAHEAD)
    audio = speech(0.1)  # 1600 samples: 3 frames, the last one short
    s.receive(audio, 0.0)
    before = drain(s, 0.0)
    assert len(before) == 2 and before[-1] == Wait(1 / 30 + 0.3)  # frame 1 waits for its lookahead
    s.receive("DONE", 0.01)
    steps = drain(s, 0.01)
    renders = [r for r in before[:-1] + steps if isinstance(r, Render)]
    assert [len(r.frame.pcm) for r in renders] == [1066, 1068, 3200 - 2134]
    assert b"".join(r.frame.pcm for r in renders) == audio
    last = renders[-1].frame
    assert len(last.window) == frame_length(2) + LOOKAHEAD and not last.window[533:].any()  # padded with silence
    assert isinstance(steps[-1], Finish)


def test_skip_drops_unsent_audio_and_numbering_continues() -> None:
    s = Session(SessionParams(), now=0.0, lookahead=0)
    s.receive(speech(3.0), 0.0)
    sent = [r for r in drain(s, 0.0) if isinstance(r, Render)]
    s.receive("SKIP", 0.1)
    assert s.samples_skipped == 48000 - sum(len(r.frame.pcm) for r in sent) // 2
    assert s.next_step(0.2) == Wait(0.1 + 300.0)  # nothing left but the idle limit
    s.receive(speech(0.5), 0.3)
    nxt = s.next_step(0.3)
    assert isinstance(nxt, Render) and nxt.frame.index == len(sent)


def test_handle_silence_sends_idle_frames_in_real_time() -> None:
    s = Session(SessionParams(handle_silence=True), now=0.0, lookahead=LOOKAHEAD, limits=Limits(lead=0.5))
    step = s.next_step(0.0)
    assert isinstance(step, Wait) and step.until == pytest.approx(0.3)
    frames = []
    t = 0.0
    while t < 2.0:
        step = s.next_step(t)
        if isinstance(step, Render):
            frames.append(step.frame)
        else:
            assert isinstance(step, Wait) and step.until is not None
            t = min(step.until, 300.0)
    assert all(f.pcm == bytes(len(f.pcm)) for f in frames)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert 50 <= len(frames) <= 52  # 30 fps from 0.3 s to 2 s
    assert s.idle_frames == len(frames)


def test_without_handle_silence_no_audio_means_no_frames() -> None:
    s = Session(SessionParams(), now=0.0, lookahead=LOOKAHEAD)
    assert isinstance(s.next_step(5.0), Wait) and s.frames_released == 0


def test_missing_lookahead_does_not_hold_a_frame_forever() -> None:
    s = Session(SessionParams(), now=0.0, lookahead=LOOKAHEAD, limits=Limits(lead=0.5))
    s.receive(speech(0.5), 0.0)
    renders = [r for r in drain(s, 0.0) if isinstance(r, Render)]
    held = s.next_step(0.0)
    assert isinstance(held, Wait)
    k = s.framer.next_index
    assert held.until == pytest.approx(k / 30 + 0.3)
    forced = s.next_step(held.until)
    assert isinstance(forced, Render) and forced.frame.index == k == len(renders)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (b"\x00" * 1001, ErrorKind.BAD_AUDIO),
        ("HELLO", ErrorKind.BAD_REQUEST),
        (b"\x00" * (2 * 1024 * 1024), ErrorKind.MESSAGE_TOO_BIG),
    ],
)
def test_bad_messages_fail_the_session(message: bytes | str, kind: ErrorKind) -> None:
    s = Session(SessionParams(), now=0.0)
    s.receive(message, 0.0)
    step = s.next_step(0.0)
    assert isinstance(step, Fail) and step.kind is kind
    assert s.closed


def test_audio_after_done_is_refused() -> None:
    s = Session(SessionParams(realtime=False), now=0.0)
    s.receive(speech(0.5), 0.0)
    s.receive("DONE", 0.0)
    s.receive(speech(0.1), 0.0)
    assert isinstance(s.next_step(0.0), Fail)


def test_session_length_limit_from_client() -> None:
    s = Session(SessionParams(max_session_length=2.0), now=10.0)
    step = s.next_step(10.0)
    assert isinstance(step, Wait) and step.until == 12.0
    s.receive(speech(0.25), 11.9)
    fail = s.next_step(12.0)
    assert isinstance(fail, Fail) and fail.kind is ErrorKind.LIMIT and "maxSessionLength" in fail.detail


def test_idle_limit_counts_from_the_last_message_or_the_last_of_its_audio_played() -> None:
    s = Session(SessionParams(max_idle_time=1.0), now=0.0)
    assert not isinstance(s.next_step(0.9), Fail)
    s.receive(speech(0.25), 0.8)
    while isinstance(s.next_step(1.5), Render):  # its audio plays from 1.5 s: the client is not idle
        pass
    assert not isinstance(s.next_step(2.4), Fail)
    fail = s.next_step(2.6)
    assert isinstance(fail, Fail) and "maxIdleTime" in fail.detail


def test_reading_pauses_while_enough_audio_waits_and_resumes_as_frames_go() -> None:
    limits = Limits(offline_buffer_seconds=1.0, realtime_buffer_seconds=3.0)
    offline = Session(SessionParams(realtime=False), now=0.0, limits=limits)
    offline.receive(speech(0.9), 0.0)
    assert not offline.reading_paused
    offline.receive(speech(0.2), 0.0)
    assert offline.reading_paused  # 1.1 s waiting
    frames = 0
    while offline.reading_paused:
        assert isinstance(offline.next_step(0.0), Render)
        frames += 1
    assert frames == 4 and offline.framer.pending_samples < 16000  # 17 600 samples: four frames made room
    live = Session(SessionParams(), now=0.0, limits=limits)
    live.receive(speech(2.9), 0.0)
    assert not live.reading_paused  # real time: keeps reading through bursts up to its own bound
    live.receive(speech(0.2), 0.0)
    assert live.reading_paused
    live.fail(ErrorKind.LIMIT, "x")
    assert not live.reading_paused  # a failing session reads nothing more anyway
    # an engine that looks further ahead than the buffer (MuseTalk's reference mode: 30 s) is
    # given its lookahead before reading pauses: otherwise no frame could ever be made
    far = Session(SessionParams(realtime=False), now=0.0, lookahead=3 * 16000, limits=limits)
    far.receive(speech(2.5), 0.0)
    assert not far.reading_paused and not isinstance(far.next_step(0.0), Render)
    far.receive(speech(0.6), 0.0)
    assert far.reading_paused and isinstance(far.next_step(0.0), Render)


def test_client_cannot_raise_server_limits() -> None:
    s = Session(SessionParams(max_session_length=10_000.0), now=0.0, limits=Limits(max_session_length=60.0))
    assert s.max_session_length == 60.0
