"""A synthetic talking character: the default character with its mouth opened in some frames and,
inside those mouths, an interior no painter draws (yellow teeth, one of them missing), so that a
frame showing it shows the character's own interior."""

from __future__ import annotations

import cv2
import numpy as np

from lipsync_stream.characters.character import Character, load_default_character, make_character
from lipsync_stream.characters.landmarks import LIPS_LOWER_INNER, LIPS_UPPER_INNER
from lipsync_stream.engines.base import MouthShape, apply_region
from lipsync_stream.engines.meshwarp import _MOVING, compose_region, rig_for

OPEN_FRAMES = range(10, 20)
YELLOW = np.array([0.55, 1.0, 1.15], np.float32)  # BGR gains: the teeth turn yellow


def talking_character() -> Character:
    base = load_default_character()
    frames = np.array(base.frames[:30])
    landmarks = np.array(base.landmarks[:30])
    for k in OPEN_FRAMES:
        ref = base.reference(k)
        shape = MouthShape(0.4 + 0.05 * (k - 10), 0.1)
        frames[k] = apply_region(ref.image, compose_region(ref, shape))
        targets = rig_for(ref.landmarks, ref.image).targets(shape)
        landmarks[k][_MOVING] = targets
        # inside the inner lips: yellow teeth, and a gap where a front tooth is missing
        poly = landmarks[k][LIPS_UPPER_INNER + LIPS_LOWER_INNER[::-1]]
        x0, y0 = np.floor(poly.min(axis=0)).astype(int)
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
        box = frames[k][y0:y1, x0:x1].astype(np.float32)
        inside = np.zeros(box.shape[:2], np.uint8)
        cv2.fillPoly(inside, [np.round(poly - (x0, y0)).astype(np.int32)], (1,))
        bright = (box.mean(axis=2) > 110) & (inside > 0)  # the drawn teeth
        box[bright] *= YELLOW
        mid = (landmarks[k][13] + landmarks[k][14]) / 2 - (x0, y0)
        gap = slice(int(mid[1]) - 12, int(mid[1])), slice(int(mid[0]) + 2, int(mid[0]) + 8)
        box[gap][bright[gap]] = (20, 20, 40)
        frames[k][y0:y1, x0:x1] = np.clip(box, 0, 255).astype(np.uint8)
    return make_character("talking-test", frames, landmarks)
