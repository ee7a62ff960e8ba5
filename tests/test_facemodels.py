"""MediaPipe's face models through ONNX Runtime: the same points MediaPipe found on the default
character (its stored landmarks were made by MediaPipe 0.10.14), on a wider and a turned
picture of the same face too, and faces that are not there are not found."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.characters.facemodels import FULL_RANGE, SHORT_RANGE, FaceMeshTracker, detect_faces
from lipsync_stream.characters.faces import FaceDetector
from lipsync_stream.characters.landmarks import LIPS_LOWER_INNER, LIPS_UPPER_INNER, track_landmarks

FRAMES = 40


@pytest.fixture(scope="module")
def character():  # type: ignore[no-untyped-def]
    return load_default_character()


def test_the_mesh_finds_the_points_mediapipe_found(character) -> None:  # type: ignore[no-untyped-def]
    # Tracked over frames and smoothed as `prepare` does; the last frames' smoothing sees fewer
    # neighbours than the stored run did, so they are left out.
    ours = track_landmarks(character.frames[:FRAMES])[: FRAMES - 4]
    stored = character.landmarks[: FRAMES - 4]
    err = np.linalg.norm(ours - stored, axis=2)
    assert err.mean() < 0.3, f"mean {err.mean():.3f} px"
    inner_lips = LIPS_UPPER_INNER + LIPS_LOWER_INNER  # the refined points: a wrong mapping is pixels off
    assert err[:, inner_lips].mean() < 0.3 and err.max() < 3.0, (err[:, inner_lips].mean(), err.max())


def settled(image_bgr: np.ndarray) -> np.ndarray:
    """The mesh on an image shown twice: the second look is from the first one's landmarks, so
    it no longer depends on where the detector's box fell."""
    tracker = FaceMeshTracker(video=True)
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    assert tracker.landmarks_rgb(rgb) is not None
    points = tracker.landmarks_rgb(rgb)
    assert points is not None
    return points


def test_a_wider_picture_and_a_turned_one_give_the_same_face(character) -> None:  # type: ignore[no-untyped-def]
    frame = character.frames[0]
    expected = settled(frame)
    assert np.linalg.norm(expected - character.landmarks[0], axis=1).mean() < 1.0
    wide = np.full((512, 900, 3), 40, np.uint8)  # letterboxed for the detector, off centre
    wide[:, 300:812] = frame
    assert np.linalg.norm(settled(wide) - (expected + [300, 0]), axis=1).mean() < 1.0  # a wrong offset or scale: tens of pixels

    angle = 25.0
    turn = cv2.getRotationMatrix2D((256, 256), angle, 1.0)
    turned = cv2.warpAffine(frame, turn, (512, 512), borderMode=cv2.BORDER_REPLICATE)
    found = settled(turned)
    moved = expected @ turn[:, :2].T + turn[:, 2]
    assert np.linalg.norm(found - moved, axis=1).mean() < 1.5  # resampled and turned: a new picture to the model
    corners = found[61], found[291]
    tilt = math.degrees(math.atan2(corners[1][1] - corners[0][1], corners[1][0] - corners[0][0]))
    assert abs(tilt + angle) < 3.0, tilt  # the mouth turned with the picture


def test_no_face_is_found_where_there_is_none(character) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    for image in (np.full((300, 400, 3), 128, np.uint8), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)):
        assert detect_faces(image, SHORT_RANGE, 0.5) == [] and detect_faces(image, FULL_RANGE, 0.5) == []
        assert FaceMeshTracker(video=True).landmarks_rgb(image) is None
    with FaceDetector() as detector:
        y1, y2, x1, x2 = detector.detect(character.frames[0])  # type: ignore[misc]
    mouth = character.landmarks[0][[61, 291, 13, 14]]
    assert (x1 < mouth[:, 0]).all() and (mouth[:, 0] < x2).all() and (y1 < mouth[:, 1]).all() and (mouth[:, 1] < y2).all()


def test_a_lost_face_is_detected_again_in_the_same_frame(character) -> None:  # type: ignore[no-untyped-def]
    tracker = FaceMeshTracker(video=True)
    rgb = cv2.cvtColor(character.frames[0], cv2.COLOR_BGR2RGB)
    assert tracker.landmarks_rgb(rgb) is not None
    assert tracker.landmarks_rgb(np.full_like(rgb, 128)) is None  # face gone: lost
    shifted = np.roll(rgb, (40, -60), axis=(0, 1))  # back, somewhere else
    found = tracker.landmarks_rgb(shifted)
    assert found is not None
    assert np.linalg.norm(found - (character.landmarks[0] + [-60, 40]), axis=1).mean() < 1.0
