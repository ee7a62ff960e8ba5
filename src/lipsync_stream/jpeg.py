"""JPEG frames spliced from pre-encoded rows: encode only the rows the mouth touches.

A reference frame is encoded once (per character, frame and quality) with a restart marker after
every row of 16x16 MCUs (4:2:0). Restart markers reset the DC predictors and byte-align the
entropy-coded data, so each MCU row is an independent run of bytes. A rendered frame then only
encodes the band of rows its mouth region covers, with the same (standard) tables, and takes the
other rows' bytes from the reference: the result is one ordinary baseline JPEG, with the same
coefficients a full encode would give, for about half the encoding work, and none for a frame
whose mouth is at rest.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import cv2
import numpy as np

MCU = 16  # 4:2:0: an MCU is 16x16 pixels
_RST = [bytes([0xFF, 0xD0 + i]) for i in range(8)]
_RST_SPLIT = re.compile(rb"\xff[\xd0-\xd7]")  # entropy data stuffs every 0xFF as 0xFF00
_EOI = b"\xff\xd9"


class JpegError(Exception):
    """The encoder's output is not laid out as splicing needs."""


def encode_with_row_restarts(image: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG, 4:2:0, standard tables, a restart marker after every MCU row."""
    params = [
        cv2.IMWRITE_JPEG_QUALITY, quality,
        cv2.IMWRITE_JPEG_RST_INTERVAL, image.shape[1] // MCU,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
    ]
    ok, buf = cv2.imencode(".jpg", image, params)
    if not ok:
        raise JpegError("JPEG encoding failed")
    return buf.tobytes()


def split_rows(jpeg: bytes) -> tuple[bytes, list[bytes]]:
    """(everything up to the scan's data, the entropy-coded bytes of each MCU row)."""
    sos = jpeg.find(b"\xff\xda")
    if sos < 0:
        raise JpegError("no start of scan")
    data_start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    end = jpeg.rfind(_EOI)
    if end < data_start:
        raise JpegError("no end of image")
    return jpeg[:data_start], _RST_SPLIT.split(jpeg[data_start:end])


@dataclass(frozen=True)
class RowJpeg:
    """A frame encoded with row restarts, split for splicing."""

    data: bytes  # the whole JPEG
    header: bytes
    rows: list[bytes]

    @classmethod
    def encode(cls, image: np.ndarray, quality: int) -> RowJpeg:
        if image.shape[0] % MCU or image.shape[1] % MCU:
            raise JpegError(f"frame size {image.shape[1]}x{image.shape[0]} is not a multiple of {MCU}")
        data = encode_with_row_restarts(image, quality)
        header, rows = split_rows(data)
        if len(rows) != image.shape[0] // MCU:
            raise JpegError(f"expected {image.shape[0] // MCU} restart intervals, found {len(rows)}")
        return cls(data, header, rows)

    def splice(self, first_row: int, band: np.ndarray, quality: int) -> bytes:
        """This frame with MCU rows from *first_row* replaced by *band* (height a multiple of 16)."""
        _, new_rows = split_rows(encode_with_row_restarts(band, quality))
        if len(new_rows) != band.shape[0] // MCU or first_row + len(new_rows) > len(self.rows):
            raise JpegError("band does not fit the frame's rows")
        rows = self.rows[:first_row] + new_rows + self.rows[first_row + len(new_rows) :]
        parts = [self.header]
        for i, row in enumerate(rows[:-1]):
            parts += [row, _RST[i % 8]]
        parts += [rows[-1], _EOI]
        return b"".join(parts)


class ReferenceJpegs:
    """Reference frames encoded once, shared by every session of a character.

    Also each reference frame's picture with the mouth at rest, per engine: what a frame of
    silence shows (an idle frame), so that it costs no rendering after its first time.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], RowJpeg] = {}
        self._rest: dict[tuple[str, int, int], bytes] = {}
        self._lock = threading.Lock()
        self.nbytes = 0  # encoded bytes held (counted in the character cache's memory limit)

    def rest(self, engine: str, index: int, quality: int) -> bytes | None:
        """The rest picture of reference frame *index* drawn by *engine*, if it was kept."""
        with self._lock:
            return self._rest.get((engine, index, quality))

    def keep_rest(self, engine: str, index: int, quality: int, data: bytes) -> None:
        with self._lock:
            if (engine, index, quality) not in self._rest:
                self._rest[(engine, index, quality)] = data
                reference = self._cache.get((index, quality))
                self.nbytes += 0 if reference is not None and reference.data is data else len(data)

    def get(self, index: int, image: np.ndarray, quality: int) -> RowJpeg:
        key = (index, quality)
        with self._lock:
            found = self._cache.get(key)
        if found is None:
            found = RowJpeg.encode(np.ascontiguousarray(image), quality)
            with self._lock:
                if key not in self._cache:
                    self._cache[key] = found
                    self.nbytes += len(found.data) + sum(len(row) for row in found.rows)
        return found
