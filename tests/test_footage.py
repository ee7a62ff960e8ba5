"""A mouth from the character's own footage: real closed lips for a closed mouth, the person's own
teeth for an open one, no flicker between source frames, and nothing changed where the source
is the frame itself."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from talking import OPEN_FRAMES, talking_character

from lipsync_stream.characters.character import load_default_character, make_character
from lipsync_stream.characters.prepare import prepare, write_video
from lipsync_stream.engines import get_engine
from lipsync_stream.engines.base import CLOSED, MouthShape, apply_region
from lipsync_stream.engines.footage import CLOSE_ENOUGH, MouthIndex, compose
from lipsync_stream.engines.viseme import TARGETS

TALKING = talking_character()


def test_a_face_whose_mouth_never_opens_is_left_to_the_warp() -> None:
    still = load_default_character()
    assert still.footage is None
    # ...nor a video too short to borrow from
    short = make_character("short", np.array(TALKING.frames[:12]), np.array(TALKING.landmarks[:12]))
    assert short.footage is None
    # and prepare says why, in words a user can act on
    assert "hardly opens" in MouthIndex.build(still.landmarks)[1]
    assert "frames" in MouthIndex.build(TALKING.landmarks[:12])[1]
    assert "closed lips" in MouthIndex.build(TALKING.landmarks)[1]
    # a degenerate landmarks file (every point in one place) is no footage, and no division by 0
    with np.errstate(all="raise"):
        assert MouthIndex.build(np.zeros((40, 478, 2), np.float32))[0] is None


def test_prepare_tells_when_the_video_has_no_mouth_to_borrow(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    still = load_default_character()
    video = tmp_path / "still.mp4"
    write_video(video, np.repeat(np.array(still.frames[:1]), 40, axis=0))
    with caplog.at_level(logging.INFO, logger="lipsync_stream.characters.prepare"):
        prepare(video, tmp_path / "still", progress=False)
    assert "no usable mouth variety" in caplog.text and "warped" in caplog.text


def test_the_index_knows_which_frames_are_open() -> None:
    footage = TALKING.footage
    assert footage is not None and len(footage.index) == len(TALKING)
    open_ = np.array([k in OPEN_FRAMES for k in range(len(TALKING))])
    assert footage.index.openings[open_].min() > footage.index.openings[~open_].max()
    assert footage.nbytes < 100_000  # the frames are the character's; the index is small


def test_a_closed_mouth_is_a_real_closed_mouth_and_an_open_one_a_real_open_one() -> None:
    index = TALKING.footage.index if TALKING.footage else None
    assert index is not None
    for ref in (3, 12, 25):
        assert index.choose(CLOSED, ref, None).frame not in OPEN_FRAMES
        assert index.choose(TARGETS["a"], ref, None).frame in OPEN_FRAMES
    # wider asks for wider
    narrow = index.choose(MouthShape(0.3), 3, None).frame
    wide = index.choose(MouthShape(1.0), 3, None).frame
    assert index.openings[wide] > index.openings[narrow]


def test_the_choice_does_not_flicker() -> None:
    index = TALKING.footage.index if TALKING.footage else None
    assert index is not None
    previous, chosen = None, []
    for k in range(20):
        previous = index.choose(MouthShape(0.6, 0.1), k % 30, previous).frame
        chosen.append(previous)
    jumps = sum(1 for a, b in zip(chosen, chosen[1:], strict=False) if b not in (a, a + 1))
    assert jumps <= 2, chosen


def test_pasting_a_frame_onto_itself_changes_nothing_visible() -> None:
    ref = TALKING.reference(5)
    assert ref.landmarks is not None
    top, band = compose(ref.image, ref.landmarks, ref.image, ref.landmarks)
    diff = np.abs(band.astype(int) - ref.image[top : top + len(band)].astype(int))
    assert diff.max() <= 2


def test_an_open_mouth_shows_the_persons_own_teeth_and_a_closed_one_shuts_an_open_frame() -> None:
    stream = get_engine("viseme").stream()
    closed_ref = TALKING.reference(3)
    opened = apply_region(closed_ref.image, stream.draw(closed_ref, TARGETS["a"])).astype(float)
    lm = closed_ref.landmarks
    assert lm is not None
    mouth = opened[int(lm[13, 1]) - 10 : int(lm[14, 1]) + 40, int(lm[61, 0]) : int(lm[291, 0])]
    assert yellow_teeth(mouth) > 30  # its video's teeth
    open_ref = TALKING.reference(15)
    shut = apply_region(open_ref.image, stream.draw(open_ref, CLOSED)).astype(float)
    olm = open_ref.landmarks
    assert olm is not None
    lips = shut[int(olm[13, 1]) - 5 : int(olm[14, 1]) + 5, int(olm[61, 0]) + 10 : int(olm[291, 0]) - 10]
    assert yellow_teeth(open_ref.image[int(olm[13, 1]) - 5 : int(olm[14, 1]) + 5, int(olm[61, 0]) + 10 : int(olm[291, 0]) - 10].astype(float)) > 30
    assert yellow_teeth(lips) == 0  # no teeth left showing


def yellow_teeth(image: np.ndarray) -> int:
    """Pixels of the talking character's yellow teeth (skin is redder and darker)."""
    return int(((image.mean(axis=2) > 110) & (image[..., 2] - image[..., 0] > 90) & (image[..., 1] > 150)).sum())


def test_a_footage_frame_far_from_every_target_is_warped_the_rest_of_the_way() -> None:
    # The widest 'a' the engine asks for is wider than any of this footage's mouths: the nearest
    # frame is opened further by the warp before it is pasted, not pasted as it is.
    footage = TALKING.footage
    assert footage is not None
    ref = TALKING.reference(3)
    assert ref.landmarks is not None
    choice = footage.index.choose(MouthShape(1.2), ref.index, None)
    assert choice.mismatch > CLOSE_ENOUGH
    as_is = apply_region(ref.image, compose(ref.image, ref.landmarks, footage.frames[choice.frame], footage.landmarks[choice.frame])).astype(float)
    drawn = apply_region(ref.image, get_engine("viseme").stream().draw(ref, MouthShape(1.2))).astype(float)
    lm = ref.landmarks
    below = (slice(int(lm[14, 1]), int(lm[152, 1])), slice(int(lm[61, 0]), int(lm[291, 0])))
    assert np.abs(drawn[below] - as_is[below]).mean() > 3  # the lower lip and chin moved further down
