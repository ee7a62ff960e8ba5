"""Spliced JPEGs: re-encoding only the mouth's rows gives exactly what a full encode gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.engines.base import MouthShape, ReferenceFrame, apply_region
from lipsync_stream.engines.meshwarp import compose_region
from lipsync_stream.engines.viseme import TARGETS
from lipsync_stream.jpeg import JpegError, RowJpeg, encode_with_row_restarts

CHARACTER = load_default_character()


def draw(ref: ReferenceFrame, shape: MouthShape) -> np.ndarray:
    """The whole frame with *shape* drawn (the renderer composites the region the same way)."""
    return apply_region(ref.image, compose_region(ref, shape))


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


@pytest.mark.parametrize("viseme", ["a", "i", "o", "fv"])
def test_spliced_frame_decodes_exactly_like_a_full_encode(viseme: str) -> None:
    ref = CHARACTER.reference(11)
    top, band = compose_region(ref, TARGETS[viseme])  # type: ignore[misc]
    assert top % 16 == 0 and len(band) % 16 == 0 and band.shape[1] == 512
    spliced = RowJpeg.encode(ref.image, 85).splice(top // 16, band, 85)
    full = encode_with_row_restarts(draw(ref, TARGETS[viseme]), 85)
    assert np.array_equal(decode(spliced), decode(full))
    assert spliced[:2] == b"\xff\xd8" and spliced[-2:] == b"\xff\xd9"


def test_rows_split_one_per_mcu_row_and_rest_is_the_reference() -> None:
    ref = CHARACTER.reference(0)
    encoded = RowJpeg.encode(ref.image, 80)
    assert len(encoded.rows) == 32
    assert compose_region(ref, TARGETS["sil"]) is None  # the renderer sends encoded.data as it is
    assert np.abs(decode(encoded.data).astype(int) - ref.image.astype(int)).mean() < 3


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(JpegError):
        RowJpeg.encode(np.zeros((500, 512, 3), np.uint8), 85)
    encoded = RowJpeg.encode(np.zeros((64, 512, 3), np.uint8), 85)
    with pytest.raises(JpegError):
        encoded.splice(3, np.zeros((32, 512, 3), np.uint8), 85)
