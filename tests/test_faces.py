"""Face detection results: the restricted unpickler, validation, and face detection."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.characters.faces import FaceDetector, FaceError, boxes_from_face_det_results, face_det_results, load_face_det_results, safe_unpickle


def detect_one(image: np.ndarray) -> tuple[int, int, int, int] | None:
    with FaceDetector() as detector:
        return detector.detect(image)



class RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/lipsync-stream-pwned",))


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_wav2lip_pickle_round_trips_in_every_protocol(protocol: int) -> None:
    frames = [np.full((64, 48, 3), i, np.uint8) for i in range(3)]
    boxes = np.array([[10, 40, 5, 30], [11, 41, 6, 31], [12, 42, 7, 32]])
    data = pickle.dumps(face_det_results(frames, boxes), protocol=protocol)
    loaded = safe_unpickle(data)
    assert np.array_equal(boxes_from_face_det_results(loaded, 3, 48, 64), boxes)
    assert np.array_equal(loaded[1][0], frames[1][11:41, 6:31])


@pytest.mark.parametrize("payload", [RunsCode(), [[np.zeros(3), (0, 1, 0, 1)], Evil()], np.array([RunsCode()], dtype=object)])
def test_code_running_pickles_are_refused_and_nothing_runs(payload: object, tmp_path: Path) -> None:
    marker = Path("/tmp/lipsync-stream-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(FaceError, match="only lists, tuples, numbers and numpy arrays|not allowed|object"):
        safe_unpickle(pickle.dumps(payload))
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"\x80\x05garbage", pickle.dumps([1, 2, 3])[:-3]])
def test_broken_pickles_give_a_clear_error(data: bytes) -> None:
    with pytest.raises(FaceError, match="cannot read the pickle"):
        safe_unpickle(data)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"a": 1}, "must be a list"),
        ([[None, (0, 10, 0, 10)]], "2 frames"),
        ([[None, (0, 10, 0, 10)], [None, (0, 10)]], "four numbers"),
        ([[None, (0, 10, 0, 10)], [None, (0, 999, 0, 10)]], "not inside"),
        ([[None, (0, 10, 0, 10)], [None, ("a", 1, 2, 3)]], "not a finite number"),
        ([[None, (0, 10, 0, 10)], [None, (float("inf"), 1, 2, 3)]], "not a finite number"),
        ([[None, (0, 10, 0, 10)], [None, (10**400, 1, 2, 3)]], "not a finite number"),
        ([[None, (0, 10, 0, 10)], [None, (float("nan"), 1, 2, 3)]], "not a finite number"),
        ([[None, (0, 10, 0, 10)], "frame"], "face_crop"),
    ],
)
def test_face_det_results_are_validated(obj: object, message: str) -> None:
    with pytest.raises(FaceError, match=message):
        boxes_from_face_det_results(obj, 2, 100, 100)


def test_detector_finds_the_default_face_and_not_a_wall() -> None:
    character = load_default_character()
    box = detect_one(character.frames[0])
    assert box is not None
    y1, y2, x1, x2 = box
    assert x1 < 254 < x2 and y1 < 303 < y2  # the mouth is inside the face box
    assert detect_one(np.full((300, 300, 3), 128, np.uint8)) is None


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loading_boxes_drops_the_face_crops_but_keeps_the_boxes(tmp_path: Path, protocol: int) -> None:
    frames = [np.full((200, 200, 3), i, np.uint8) for i in range(4)]
    boxes = np.array([[10, 150, 20, 160]] * 4)
    entries = face_det_results(frames, boxes)
    entries[2][1] = np.array([10, 150, 20, 160])  # a box given as an array is a box too
    path = tmp_path / "faces.pkl"
    path.write_bytes(pickle.dumps(entries, protocol=protocol))
    assert np.array_equal(load_face_det_results(path, 200, 200), boxes)


def test_pickle_of_many_small_objects_is_refused_before_it_is_built(tmp_path: Path) -> None:
    # 1.1 million tiny entries: 13 MB as a pickle, several hundred MB as Python objects
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps([[None, (0, 1, 0, 1)]] * 1_100_000))
    with pytest.raises(FaceError, match="more than 1000000 items"):
        load_face_det_results(path, 10, 10)
