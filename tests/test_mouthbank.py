"""A character's own mouth interiors: kept from the frames where its mouth opens, used instead of
the drawn interior, so that its teeth are the person's teeth."""

from __future__ import annotations

import dataclasses

import numpy as np
from talking import OPEN_FRAMES, talking_character

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.engines.base import apply_region
from lipsync_stream.engines.meshwarp import compose_region
from lipsync_stream.engines.mouthbank import OPENING_BINS, WIDTH_BINS
from lipsync_stream.engines.viseme import TARGETS

TALKING = talking_character()


def test_a_mouth_that_never_opens_keeps_no_interiors() -> None:
    assert load_default_character().interiors is None


def test_only_open_frames_are_kept_at_most_one_per_cell() -> None:
    bank = TALKING.interiors
    assert bank is not None and 1 <= len(bank) <= (len(OPENING_BINS) + 1) * (len(WIDTH_BINS) + 1)
    assert all(i.frame in OPEN_FRAMES for i in bank.interiors)
    assert bank.nbytes < 2_000_000
    assert bank.nearest(0.22, 1.0).opening < bank.nearest(0.45, 1.0).opening


def test_a_closed_frame_opens_onto_the_characters_own_teeth() -> None:
    ref = TALKING.reference(3)  # a closed mouth
    own = apply_region(ref.image, compose_region(ref, TARGETS["a"])).astype(float)
    drawn = apply_region(ref.image, compose_region(dataclasses.replace(ref, interiors=None), TARGETS["a"])).astype(float)
    lm = ref.landmarks
    assert lm is not None
    changed = np.abs(own - drawn).sum(axis=2) > 30
    ys, xs = np.nonzero(changed)
    assert len(ys) > 100  # the interior differs...
    cx = float(np.mean(lm[[61, 291], 0]))
    assert abs(float(xs.mean()) - cx) < 15 and ys.min() > lm[[61, 291], 1].min() - 5  # ...inside the mouth only
    teeth = own[changed & (own.mean(axis=2) > 110)]
    assert len(teeth) > 30 and np.median(teeth[:, 2] - teeth[:, 0]) > 60  # yellow, as in its video
    assert np.median(drawn[changed & (drawn.mean(axis=2) > 110)][:, 2] - drawn[changed & (drawn.mean(axis=2) > 110)][:, 0]) < 60
