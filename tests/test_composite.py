"""Pasting a generated face back: only the lower face changes, softly, in the frame's colours."""

from __future__ import annotations

import numpy as np

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.composite import crop_input, face_box, lower_face_mask, paste_face


def test_only_the_lower_face_changes_and_no_rectangle_shows() -> None:
    c = load_default_character()
    ref = c.reference(0)
    box = face_box(c.boxes[0])
    y1, y2, x1, x2 = box
    generated = np.full((96, 96, 3), (30, 200, 30), np.uint8)  # a garish green face
    top, band = paste_face(ref, box, generated)
    assert top % 16 == 0 and len(band) % 16 == 0 and band.shape[1] == 512
    frame = ref.image.copy()
    frame[top : top + len(band)] = band
    changed = np.abs(frame.astype(int) - ref.image.astype(int)).max(axis=2) > 2
    ys, _xs = np.nonzero(changed)
    lm = ref.landmarks
    assert lm is not None
    mask = lower_face_mask(lm, box)
    assert mask[: int(lm[[2, 98, 327], 1].min()) - y1].max() < 0.05  # nothing above the nostrils
    assert mask[int(lm[152, 1]) - y1 + 3 :].max() < 0.05  # nor below the chin
    assert ys.min() > lm[1, 1] and ys.max() < lm[152, 1] + 10
    assert not changed[y1:y2, x1].any() and not changed[y1:y2, x2 - 1].any()  # the box's edges stay: no rectangle
    assert changed[int(lm[14, 1]), int(lm[14, 0])]  # the mouth is replaced
    # colours follow the frame, not the generator: the mouth area keeps the skin's mean colour
    inside = mask > 0.9
    region_before = ref.image[y1:y2, x1:x2][inside].mean(axis=0)
    region_after = frame[y1:y2, x1:x2][inside].mean(axis=0)
    assert np.abs(region_after - region_before).max() < 3


def test_crop_input_is_wav2lips_six_channels() -> None:
    c = load_default_character()
    x = crop_input(c.frames[0], face_box(c.boxes[0]), 96)
    assert x.shape == (6, 96, 96) and x.dtype == np.float32
    assert not x[:3, 48:].any() and x[:3, :48].any()  # the first copy's lower half is blacked out
    assert np.array_equal(x[:3, :48], x[3:, :48]) and 0.0 <= x.min() and x.max() <= 1.0


def test_strength_shows_that_share_of_the_generated_face() -> None:
    c = load_default_character()
    ref = c.reference(0)
    box = face_box(c.boxes[0])
    generated = np.full((96, 96, 3), (30, 200, 30), np.uint8)
    lm = ref.landmarks
    assert lm is not None
    y, x = int(lm[14, 1]), int(lm[14, 0])
    top, full = paste_face(ref, box, generated)
    _, half = paste_face(ref, box, generated, 0.5)
    _, none = paste_face(ref, box, generated, 0.0)
    assert np.array_equal(none, ref.image[top : top + len(none)])
    expected = 0.5 * ref.image[y].astype(float) + 0.5 * full[y - top].astype(float)
    assert np.abs(half[y - top, x - 10 : x + 10].astype(float) - expected[x - 10 : x + 10]).max() <= 1.5


def test_sharpen_leaves_flat_areas_and_steepens_edges() -> None:
    from lipsync_stream.composite import sharpen

    flat = np.full((40, 40, 3), 120, np.uint8)
    assert np.array_equal(sharpen(flat, 0.5), flat)
    step = flat.copy()
    step[:, 20:] = 180
    out = sharpen(step, 0.5).astype(int)
    assert out[:, 18].mean() < 120 and out[:, 21].mean() > 180  # overshoot on each side of the edge
    assert np.array_equal(sharpen(step, 0.0), step)


def test_a_wav2lip_pickles_box_is_used_as_given_and_others_are_padded_below() -> None:
    box = np.array([100, 400, 150, 350])
    assert face_box(box, given=True) == (100, 400, 150, 350)
    assert face_box(box) == (100, 415, 150, 350)  # 5 % of its height below: the chin
    assert face_box(box, pad_below=10) == (100, 410, 150, 350)  # Wav2Lip's inference.py: 10 px
    assert face_box(np.array([100, 510, 150, 350]), pad_below=10) == (100, 512, 150, 350)  # inside the frame
