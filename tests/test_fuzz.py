"""Property-based tests (Hypothesis): whatever a client sends, the protocol layer answers cleanly."""

from __future__ import annotations

import json
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lipsync_stream.characters.character import CharacterError, CharacterStore
from lipsync_stream.characters.faces import FaceError, boxes_from_face_det_results, safe_unpickle
from lipsync_stream.characters.fetch import FetchConfig, Fetcher
from lipsync_stream.wire import protocol as p
from lipsync_stream.wire.protocol import AudioFramer, ErrorKind, ProtocolError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**80), 10**80) | st.floats(allow_nan=True) | st.text(max_size=20),
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


@settings(max_examples=60, deadline=None)
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


# Frame messages that get past the tag: real headers with any lengths, index and size, any tail.
_frames = st.builds(
    lambda length, index, w, h, tail, audio_tag: b"VIDEO" + struct.pack("<iiii", length, index, w, h) + tail + (b"AUDIO" + audio_tag if audio_tag is not None else b""),
    st.integers(-(2**31), 2**31 - 1) | st.integers(0, 200),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.binary(max_size=200),
    st.none() | st.binary(max_size=12),
)


@given(st.binary(max_size=120) | _frames)
def test_random_bytes_never_crash_the_frame_decoder(data: bytes) -> None:
    try:
        frame = p.decode_frame(data)
    except ValueError:
        return
    # what decodes is consistent: the blocks add up to the message
    assert len(data) == 21 + len(frame.image) + (9 + len(frame.audio) if frame.audio is not None else 0)


_REAL_PICKLES = [
    pickle.dumps([[np.zeros((4, 3, 3), np.uint8), (1, 5, 2, 6)], [np.ones((4, 3, 3), np.uint8), np.array([1, 5, 2, 6])]], protocol=protocol) for protocol in (2, 4, 5)
]


@st.composite
def mutated_pickles(draw: st.DrawFn) -> bytes:
    """A real face_det_results pickle with bytes changed, cut, inserted or dropped: most still
    parse far enough to reach the unpickler's checks and the box validation."""
    data = bytearray(draw(st.sampled_from(_REAL_PICKLES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "drop"]))
        if kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[i:]
            break
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b"\x80\x04" + b) | mutated_pickles())
def test_random_pickles_only_ever_give_face_errors(data: bytes) -> None:
    try:
        obj = safe_unpickle(data)
    except FaceError:
        return
    try:
        boxes_from_face_det_results(obj, 2, 64, 64)
    except FaceError:
        pass


def test_the_pickle_fuzzer_reaches_the_box_checks() -> None:
    """Not every mutation fails at the unpickler: many reach the validation of the boxes."""
    reached = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        data = bytearray(_REAL_PICKLES[seed % 3])
        data[int(rng.integers(len(data) // 2, len(data)))] ^= 1 << int(rng.integers(0, 8))
        try:
            obj = safe_unpickle(bytes(data))
        except FaceError:
            continue
        reached += 1
        try:
            boxes_from_face_det_results(obj, 2, 64, 64)
        except FaceError:
            pass
    assert reached > 20


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


_ROOT = Path(tempfile.mkdtemp(prefix="lipsync-fuzz-"))
(_ROOT / "assets" / "dir.mp4").mkdir(parents=True)
(_ROOT / "assets" / "junk.mp4").write_bytes(b"not a video" * 10)
(_ROOT / "assets" / "loop.mp4").symlink_to(_ROOT / "assets" / "loop.mp4")
(_ROOT / "assets" / "junk.pkl").write_bytes(b"\x80\x04K\x01.")
# http(s) hosts "resolve" to loopback, which the SSRF guard refuses: nothing leaves the machine.
_STORE = CharacterStore(Fetcher(FetchConfig(asset_roots=[_ROOT / "assets"], cache_dir=_ROOT / "cache"), resolver=lambda host, port: ["127.0.0.1"]))

_piece = st.text(st.characters(blacklist_categories=()), max_size=30) | st.sampled_from(
    ["..", "/", "%00", "%2e%2e/", "x" * 256, "dir.mp4", "junk.mp4", "loop.mp4", "junk.pkl", ":99999", ":-1", ":8o", "@", "[::1]", "[", "\n", "\0", "~", "default", "a" * 5000]
)
references = st.builds(lambda scheme, parts: scheme + "".join(parts), st.sampled_from(["", "http://", "https://", "HTTP://", "file://", "file:///", "ftp://", "/", "//"]), st.lists(_piece, max_size=5))


@settings(max_examples=300, deadline=None)
@given(references, st.one_of(st.none(), references))
def test_any_reference_is_a_named_client_error_never_an_internal_one(video: str, faces: str | None) -> None:
    try:
        params = p.parse_first_message(json.dumps({"video_reference_url": video, "face_det_results": faces}))
    except ProtocolError as exc:
        assert exc.kind is ErrorKind.BAD_REQUEST and ("video_reference_url" in exc.detail or "face_det_results" in exc.detail)
        return
    try:
        _STORE.load(params.video_reference_url, params.face_det_results)
    except CharacterError as exc:  # the server answers this as character_error, naming the reference
        assert str(exc) and "\n" not in str(exc)
