"""The wire format, byte for byte (the LipsyncStream protocol, sections 1-4)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lipsync_stream.wire import protocol as p
from lipsync_stream.wire.protocol import AudioFramer, Control, ErrorKind, ProtocolError, SessionParams


def test_frame_grid_is_round_k_16000_over_30() -> None:
    for k in range(200):
        assert p.frame_start(k) == round(k * 16000 / 30)
        assert p.frame_length(k) in (533, 534)
    assert [p.frame_length(k) for k in range(3)] == [533, 534, 533]
    assert p.frame_start(30) == 16000  # exactly 30 frames per second of audio


@pytest.mark.parametrize("n", [0, 1, 533, 534, 1066, 1067, 16000, 16001, 48000])
def test_frames_for_samples_covers_the_stream(n: int) -> None:
    k = p.frames_for_samples(n)
    if n == 0:
        assert k == 0
    else:
        assert p.frame_start(k - 1) < n <= p.frame_start(k)


def test_encode_frame_pins_every_byte() -> None:
    image = b"\xff\xd8jpeg\xff\xd9"
    audio = np.arange(533, dtype="<i2").tobytes()
    msg = p.encode_frame(7, image, audio)
    assert msg[:5] == b"VIDEO"
    assert msg[5:9] == (12 + len(image)).to_bytes(4, "little")
    assert msg[9:13] == (7).to_bytes(4, "little")
    assert msg[13:17] == (512).to_bytes(4, "little")
    assert msg[17:21] == (512).to_bytes(4, "little")
    L = 12 + len(image)
    assert msg[21 : 9 + L] == image
    assert msg[9 + L : 14 + L] == b"AUDIO"
    assert struct.unpack("<i", msg[14 + L : 18 + L]) == (1066,)
    assert msg[18 + L :] == audio
    assert len(msg) == 18 + L + 1066


def test_sync_audio_false_ends_after_video_block() -> None:
    msg = p.encode_frame(0, b"abc", None)
    assert msg == b"VIDEO" + struct.pack("<iiii", 15, 0, 512, 512) + b"abc"
    decoded = p.decode_frame(msg)
    assert decoded.audio is None and decoded.image == b"abc"


def test_raw_frame_round_trip() -> None:
    img = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    msg = p.encode_frame(3, img.tobytes(), b"\x01\x00" * 534)
    assert len(msg) == 21 + p.RAW_FRAME_BYTES + 9 + 1068
    d = p.decode_frame(msg)
    assert (d.index, d.width, d.height) == (3, 512, 512)
    assert np.array_equal(np.frombuffer(d.image, np.uint8).reshape(512, 512, 3), img)
    assert d.pcm().tolist() == [1] * 534


@pytest.mark.parametrize(
    "bad",
    [b"", b"VIDEO", b"AUDIO" + bytes(16), p.encode_frame(0, b"x", b"ab")[:-1], p.encode_frame(0, b"x", None) + b"junk"],
)
def test_decode_frame_is_strict(bad: bytes) -> None:
    with pytest.raises(ValueError):
        p.decode_frame(bad)


def test_first_message_defaults_and_round_trip() -> None:
    params = p.parse_first_message('{"video_reference_url": "https://x/c/c.mp4", "face_det_results": "https://x/c/c.pkl"}')
    assert params == SessionParams("https://x/c/c.mp4", "https://x/c/c.pkl", True, True)
    assert p.parse_first_message("{}").video_reference_url == "default"
    assert p.parse_first_message(b'{"video_reference_url": null}').video_reference_url == "default"
    full = SessionParams("a.mp4", None, False, False, True, 12.0, 3.0, False)
    assert p.parse_first_message(p.first_message(full)) == full


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"isJPG": "yes"}', "isJPG"),
        ('{"syncAudio": 1}', "syncAudio"),
        ('{"video_reference_url": 5}', "video_reference_url"),
        ('{"face_det_results": []}', "face_det_results"),
        ('{"maxSessionLength": -1}', "maxSessionLength"),
        ('{"maxIdleTime": "10"}', "maxIdleTime"),
        ('{"realtime": null, "handleSilence": 0}', "handleSilence"),
        # hostile values: each a bad_request that names its field, never an internal error
        ('{"maxSessionLength": ' + "9" * 5000 + "}", "maxSessionLength"),
        ('{"isJPG": -' + "1" * 5000 + "}", "isJPG"),
        ('{"video_reference_url": "http://example.com/\\ud800.mp4"}', "video_reference_url"),
        ('{"video_reference_url": "chars/a\\u0000b.mp4"}', "video_reference_url"),
        ('{"video_reference_url": "chars/a\\nforged log line.mp4"}', "video_reference_url"),
        ('{"face_det_results": "' + "x" * 256 + '.pkl"}', "face_det_results"),
        ('{"video_reference_url": "file:///assets/' + "%78" * 256 + '.mp4"}', "video_reference_url"),
        ('{"video_reference_url": "http://example.com:99999/a.mp4"}', "video_reference_url"),
        ('{"video_reference_url": "https://:443/a.mp4"}', "video_reference_url"),
        ('{"video_reference_url": "' + "a/" * 3000 + '"}', "video_reference_url"),
        ('{"video_reference_url": 1e400}', "video_reference_url"),
    ],
)
def test_bad_first_message_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_first_message(text)
    assert info.value.kind is ErrorKind.BAD_REQUEST
    assert field in info.value.detail


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", b"\xff\xfe", "[" * 100_000, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"])
def test_first_message_must_be_a_json_object(text: str | bytes) -> None:
    with pytest.raises(ProtocolError, match="bad_request"):
        p.parse_first_message(text)


def test_huge_integers_in_unknown_fields_are_ignored_not_converted() -> None:
    assert p.parse_first_message('{"future_field": ' + "7" * 100_000 + "}") == SessionParams()


def test_capacity_closes_with_try_again_later() -> None:
    assert ErrorKind.CAPACITY.value == "capacity" and ErrorKind.CAPACITY.close_code == 1013


def test_error_message_and_close_codes() -> None:
    assert json.loads(p.error_message(ErrorKind.BAD_AUDIO, "odd")) == {"error": "bad_audio", "detail": "odd"}
    assert ErrorKind.BAD_AUDIO.close_code == 1007
    assert ErrorKind.MESSAGE_TOO_BIG.close_code == 1009
    assert ErrorKind.BAD_REQUEST.close_code == 1008


def test_controls() -> None:
    assert p.parse_control("DONE") is Control.DONE
    assert p.parse_control("SKIP\n") is Control.SKIP
    with pytest.raises(ProtocolError, match="DONE or SKIP"):
        p.parse_control("HELLO")


def _drain(framer: AudioFramer) -> list[p.AudioFrame]:
    out = []
    while framer.ready():
        out.append(framer.pop())
    return out


def test_framer_slices_exactly_and_returns_every_byte() -> None:
    rng = np.random.default_rng(1)
    audio = rng.integers(-30000, 30000, 16000 * 2 + 123, dtype=np.int16).astype("<i2").tobytes()
    framer = AudioFramer(lookahead=534)
    frames: list[p.AudioFrame] = []
    pos = 0
    while pos < len(audio):
        chunk = audio[pos : pos + 3002]
        framer.push(chunk)
        pos += len(chunk)
        frames += _drain(framer)
    framer.flush()
    frames += _drain(framer)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert len(frames) == p.frames_for_samples(len(audio) // 2)
    assert b"".join(f.pcm for f in frames) == audio
    assert all(len(f.pcm) == 2 * p.frame_length(f.index) for f in frames[:-1])
    # the window holds the frame then the lookahead, zero-padded at the end of the stream
    f0 = frames[0]
    assert len(f0.window) == 533 + 534
    assert f0.window.tobytes() == audio[: 2 * (533 + 534)]
    assert not frames[-1].window[len(frames[-1].pcm) // 2 :].any()


def test_framer_waits_for_lookahead() -> None:
    framer = AudioFramer(lookahead=534)
    framer.push(bytes(2 * 533))
    assert framer.has_full_frame() and not framer.ready()
    framer.push(bytes(2 * 534))
    assert framer.ready()


def test_framer_refuses_odd_bytes_and_audio_after_done() -> None:
    framer = AudioFramer()
    with pytest.raises(ProtocolError) as info:
        framer.push(b"\x00\x01\x02")
    assert info.value.kind is ErrorKind.BAD_AUDIO
    framer.flush()
    with pytest.raises(ProtocolError, match="after DONE"):
        framer.push(b"\x00\x00")


def test_framer_skip_and_silence_padding() -> None:
    framer = AudioFramer()
    framer.push(bytes(2 * 600))
    assert framer.pop().index == 0
    assert framer.skip() == 600 - 533
    assert framer.pending_samples == 0
    assert framer.pad_next_with_silence() == 534
    f = framer.pop()
    assert f.index == 1 and f.pcm == bytes(2 * 534)


def test_framer_context_carries_previous_samples() -> None:
    framer = AudioFramer(context=100)
    audio = np.arange(2000, dtype="<i2")
    framer.push(audio.tobytes())
    first, second = framer.pop(), framer.pop()
    assert not first.window[:100].any()
    assert second.window[:100].tolist() == list(range(433, 533))


def test_frames_know_their_place_in_the_stream() -> None:
    framer = AudioFramer(lookahead=100, context=50)
    framer.push(bytes(2 * 2000))
    a, b = framer.pop(), framer.pop()
    assert (a.start, b.start) == (-50, 533 - 50)
    assert a.valid == 50 + 533 + 100 and a.epoch == 0
    framer.skip()
    framer.push(bytes(2 * 600))
    c = framer.pop(force=True)
    assert c.start == 2000 - 50 and c.epoch == 1  # skipped samples are passed over, not reused
    assert c.valid == 50 + 600 < len(c.window)  # the lookahead that has not come reads as zeros
