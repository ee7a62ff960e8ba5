"""Property-based tests (Hypothesis): whatever a client sends, the protocol layer answers cleanly."""

from __future__ import annotations

import json
import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lipsync_stream import protocol as p
from lipsync_stream.faces import FaceError, boxes_from_face_det_results, safe_unpickle
from lipsync_stream.protocol import AudioFramer, ErrorKind, ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(sorted(p.KNOWN_FIELDS) + ["other"])


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_first_message_parses_or_is_a_bad_request(data: str | bytes) -> None:
    try:
        params = p.parse_first_message(data)
    except ProtocolError as exc:
        assert exc.kind is ErrorKind.BAD_REQUEST and exc.detail
    else:
        assert isinstance(params, p.SessionParams)


@given(st.dictionaries(fields, json_values, max_size=6))
def test_json_objects_with_any_values(obj: dict) -> None:
    try:
        params = p.parse_first_message(json.dumps(obj))
    except ProtocolError as exc:
        assert exc.kind is ErrorKind.BAD_REQUEST
        assert any(f"'{name}'" in exc.detail for name in obj), exc.detail  # the error names a field
    else:
        assert p.parse_first_message(p.first_message(params)) == params


@settings(max_examples=60)
@given(st.binary(max_size=6000).filter(lambda b: len(b) % 2 == 0), st.lists(st.integers(1, 3000), max_size=30), st.integers(0, 1600), st.integers(0, 1000))
def test_any_chunking_returns_the_same_audio(audio: bytes, cuts: list[int], lookahead: int, context: int) -> None:
    framer = AudioFramer(lookahead, context)
    frames = []
    pos = 0
    for cut in cuts:
        size = 2 * cut
        framer.push(audio[pos : pos + size])
        pos += size
        while framer.ready():
            frames.append(framer.pop())
    framer.push(audio[pos:])
    framer.flush()
    while framer.ready():
        frames.append(framer.pop())
    assert b"".join(f.pcm for f in frames) == audio
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(len(f.window) == context + p.frame_length(f.index) + lookahead for f in frames)


@given(st.binary(max_size=99).filter(lambda b: len(b) % 2 == 1))
def test_odd_audio_is_bad_audio(data: bytes) -> None:
    try:
        AudioFramer().push(data)
    except ProtocolError as exc:
        assert exc.kind is ErrorKind.BAD_AUDIO
    else:
        raise AssertionError("odd byte count accepted")


@given(st.integers(0, 2**31 - 1), st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=300)))
def test_frame_messages_round_trip(index: int, image: bytes, audio: bytes | None) -> None:
    d = p.decode_frame(p.encode_frame(index, image, audio))
    assert (d.index, d.image, d.audio, d.width, d.height) == (index, image, audio, 512, 512)


@given(st.binary(max_size=120))
def test_random_bytes_never_crash_the_frame_decoder(data: bytes) -> None:
    try:
        p.decode_frame(data)
    except ValueError:
        pass


@settings(max_examples=80)
@given(st.binary(max_size=300))
def test_random_pickles_only_ever_give_face_errors(data: bytes) -> None:
    try:
        obj = safe_unpickle(b"\x80\x04" + data)
    except FaceError:
        return
    try:
        boxes_from_face_det_results(obj, 1, 64, 64)
    except FaceError:
        pass


def test_array_claiming_more_data_than_it_has_is_refused() -> None:
    good = pickle.dumps([[np.zeros((2, 2, 3), np.uint8), (0, 2, 0, 2)]], protocol=2)
    evil = good.replace(b"K\x02K\x02K\x03\x87", b"J\x00\x00\x00\x10K\x02K\x03\x87")  # shape (2**28, 2, 3)
    assert evil != good
    try:
        safe_unpickle(evil)
    except FaceError:
        pass
    else:
        raise AssertionError("array larger than its data accepted")
