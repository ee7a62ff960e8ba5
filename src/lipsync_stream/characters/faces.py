"""Faces in character videos: Wav2Lip-style pickles (loaded safely), detection, mouth position.

A ``face_det_results`` pickle from a URL is untrusted: it is read by an unpickler that can build
only lists, tuples, numbers, strings and plain numpy arrays (no object dtype), so nothing in it
can run code. When no pickle is given, faces are found with MediaPipe's face detector, run by
ONNX Runtime from a model shipped in this package (:mod:`.facemodels`; no download).
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import pickletools
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from .face_errors import FaceError as FaceError  # raised here; both also importable from this module
from .face_errors import FaceModelMissing as FaceModelMissing
from .facemodels import FULL_RANGE, detect_faces, session

log = logging.getLogger(__name__)

MAX_PICKLE_BYTES = 1 << 30
#: with only boxes wanted, array payloads larger than this are not kept (the face crops)
KEEP_ARRAY_BYTES = 4096
#: opcodes a pickle may hold (a real one has a few dozen per frame; at most 900 frames)
MAX_PICKLE_OPS = 1_000_000


# --- restricted unpickling ------------------------------------------------------------------------


def _safe_dtype(*args: Any) -> np.dtype:
    # numpy pickles a dtype as dtype(str, align: bool, copy: bool); nothing else is accepted.
    if not args or not isinstance(args[0], str) or len(args) > 3 or not all(isinstance(a, bool) for a in args[1:]):
        raise FaceError("pickle builds a dtype in a way numpy never pickles one")
    try:
        dtype = np.dtype(*args)
    except (TypeError, ValueError) as exc:
        raise FaceError(f"pickle holds an unknown dtype: {exc}") from None
    if dtype.hasobject:
        raise FaceError("pickle holds an object array; only plain numeric arrays are allowed")
    return dtype


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: an argument to ``_reconstruct``, never callable."""


class _BoundedArray(np.ndarray):
    """An array unpickled for a pickle's boxes only: large payloads (face crops) are not kept.

    numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` followed by ``__setstate__``
    with the shape and the raw bytes. Dropping big payloads here bounds a load's memory by the
    largest single array instead of the whole pickle.
    """

    def __setstate__(self, state: Any) -> None:
        try:
            version, shape, dtype, _fortran, data = state
            expected = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
        except (TypeError, ValueError, OverflowError):
            raise FaceError("pickle holds a malformed array") from None
        if isinstance(data, (bytes, bytearray)) and len(data) == expected > KEEP_ARRAY_BYTES:
            state = (version, (0,), dtype, False, b"")  # the pixels of a face crop: never read
        try:
            super().__setstate__(state)
        except (TypeError, ValueError) as exc:
            raise FaceError(f"pickle holds a malformed array: {exc}") from None


def _safe_scalar(dtype: np.dtype, data: bytes = b"") -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise FaceError("pickle holds an object scalar; only numbers are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _safe_codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # Protocol-2 pickles carry bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise FaceError("pickle calls _codecs.encode other than for bytes")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only lists, tuples, numbers, strings and plain numeric arrays.

    With *keep_arrays* false, array payloads over KEEP_ARRAY_BYTES are dropped (see
    :class:`_BoundedArray`): for reading the boxes of a pickle that also carries face crops.
    """

    def __init__(self, file: IO[bytes], keep_arrays: bool = True) -> None:
        super().__init__(file)
        array_type = np.ndarray if keep_arrays else _BoundedArray

        def reconstruct(cls: Any, shape: Any = (0,), dtype: Any = b"b") -> np.ndarray:
            # The data comes afterwards through __setstate__, so it is never larger than the pickle.
            if cls is not _NdarrayToken or tuple(shape) != (0,):
                raise FaceError("pickle builds an array in a way numpy never pickles one")
            return np.ndarray.__new__(array_type, (0,), dtype)

        def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
            # Protocol 5 pickles arrays as _frombuffer(bytes, dtype, shape, order).
            if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
                raise FaceError("pickle holds an array that is not plain numeric data")
            try:
                if not keep_arrays and len(buffer) > KEEP_ARRAY_BYTES:
                    return np.empty(0, dtype)
                return np.frombuffer(bytes(buffer), dtype=dtype).reshape(tuple(shape), order=order)
            except (TypeError, ValueError) as exc:
                raise FaceError(f"pickle holds a malformed array: {exc}") from None

        self._allowed: dict[tuple[str, str], Any] = {
            ("_codecs", "encode"): _safe_codecs_encode,
            ("numpy", "ndarray"): _NdarrayToken,
            ("numpy", "dtype"): _safe_dtype,
        }
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            self._allowed[(mod, "_reconstruct")] = reconstruct
            self._allowed[(mod, "scalar")] = _safe_scalar
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            self._allowed[(mod, "_frombuffer")] = frombuffer

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise FaceError(f"pickle refers to {module}.{name}; only lists, tuples, numbers and numpy arrays are allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise FaceError("pickle uses persistent ids, which are not allowed")


def _unpickle(file: IO[bytes], keep_arrays: bool) -> Any:
    """Unpickle a seekable file, refusing pickles of more than MAX_PICKLE_OPS opcodes first.

    Small objects cost far more memory than their bytes in a pickle (a tiny tuple: a dozen bytes
    there, ~80 in memory), so the size cap alone does not bound memory; the opcode count does. A
    real Wav2Lip pickle has a few dozen opcodes per frame, its bulk being a few large crops.
    """
    try:
        for count, _op in enumerate(pickletools.genops(file)):
            if count >= MAX_PICKLE_OPS:
                raise FaceError(f"pickle holds more than {MAX_PICKLE_OPS} items; face_det_results for a character needs far fewer")
        file.seek(0)
        return _RestrictedUnpickler(file, keep_arrays).load()
    except FaceError:
        raise
    except RecursionError:
        raise FaceError("cannot read the pickle: it is nested too deeply") from None
    except Exception as exc:  # truncated or garbled data raises many kinds of errors
        raise FaceError(f"cannot read the pickle: {type(exc).__name__}: {exc}") from None


def safe_unpickle(data: bytes) -> Any:
    """Unpickle *data* admitting only plain data; anything else raises :class:`FaceError`."""
    if len(data) > MAX_PICKLE_BYTES:
        raise FaceError(f"pickle is {len(data)} bytes, more than the {MAX_PICKLE_BYTES} allowed")
    return _unpickle(io.BytesIO(data), keep_arrays=True)


def boxes_from_face_det_results(obj: Any, n_frames: int | None, width: int, height: int) -> np.ndarray:
    """Validate a Wav2Lip list ``[[face_crop, (y1, y2, x1, x2)], ...]``; returns int32 (N, 4) boxes.

    *n_frames* None accepts any non-empty count (the caller checks it against the video later).
    """
    if not isinstance(obj, (list, tuple)):
        raise FaceError(f"face_det_results must be a list with one entry per frame, got {type(obj).__name__}")
    if (n_frames is not None and len(obj) != n_frames) or not obj:
        raise FaceError(f"face_det_results has {len(obj)} entries but the video has {n_frames or 'some'} frames")
    boxes = np.empty((len(obj), 4), dtype=np.int32)
    for i, entry in enumerate(obj):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise FaceError(f"face_det_results[{i}] must be [face_crop, (y1, y2, x1, x2)]")
        coords = entry[1]
        if not isinstance(coords, (list, tuple, np.ndarray)) or len(coords) != 4:
            raise FaceError(f"face_det_results[{i}][1] must be four numbers (y1, y2, x1, x2)")
        try:
            y1, y2, x1, x2 = (int(round(float(c))) for c in coords)
        except (TypeError, ValueError, OverflowError):  # OverflowError: inf, or 10**400
            raise FaceError(f"face_det_results[{i}][1] holds something that is not a finite number") from None
        if not (0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width):
            raise FaceError(f"face_det_results[{i}] box (y1={y1}, y2={y2}, x1={x1}, x2={x2}) is not inside the {width}x{height} frame")
        boxes[i] = (y1, y2, x1, x2)
    return boxes


def load_face_det_results(path: Path, width: int, height: int) -> np.ndarray:
    """The boxes of a Wav2Lip pickle for a *width* x *height* video, read with bounded memory.

    Its face crops are dropped while reading. The caller checks the count against the video.
    """
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise FaceError(f"{path.name} is {size} bytes, more than the {MAX_PICKLE_BYTES} allowed for a pickle")
        with open(path, "rb") as f:
            obj = _unpickle(f, keep_arrays=False)
    except OSError as exc:
        raise FaceError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    return boxes_from_face_det_results(obj, None, width, height)


def face_det_results(frames: Sequence[np.ndarray], boxes: np.ndarray) -> list[list[Any]]:
    """The Wav2Lip-compatible structure for *frames* and their boxes (for other tools to read)."""
    return [[f[y1:y2, x1:x2].copy(), (int(y1), int(y2), int(x1), int(x2))] for f, (y1, y2, x1, x2) in zip(frames, boxes, strict=True)]


# --- detection ----------------------------------------------------------------------------------

DETECT_MAX_SIDE = 640  # frames are scaled down to this for detection: faster, and enough


class FaceDetector:
    """MediaPipe's full-range face detector through ONNX Runtime (:mod:`.facemodels`; the model
    ships in this package). Holds nothing per call: threads may share one."""

    def __init__(self, min_confidence: float = 0.5) -> None:
        session(FULL_RANGE.file)  # a missing model is an error now, not at the first frame
        self.min_confidence = min_confidence

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release (the session is shared); kept so callers can scope a detector."""

    def detect(self, image: np.ndarray) -> tuple[int, int, int, int] | None:
        """The most confident face in a BGR image as (y1, y2, x1, x2), or None."""
        h, w = image.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        faces = detect_faces(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), FULL_RANGE, self.min_confidence)
        if not faces:
            return None
        bx1, by1, bx2, by2 = (float(v) / scale for v in faces[0].box)
        x1, y1 = max(0, round(bx1)), max(0, round(by1))
        x2, y2 = min(w, round(bx2)), min(h, round(by2))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        return y1, y2, x1, x2


def boxes_from_detections(found: dict[int, tuple[int, int, int, int]], n: int, width: int, height: int, searched: int) -> np.ndarray:
    """Boxes (y1, y2, x1, x2) for all *n* frames from those found on some: interpolated, smoothed."""
    if not found:
        raise FaceError(f"no face found in the video ({searched} frames searched)")
    if len(found) < 0.3 * searched:
        log.warning("a face was found in only %d of %d searched frames; the rest are interpolated", len(found), searched)
    found_idx = sorted(found)
    found_arr = np.asarray([found[i] for i in found_idx], dtype=np.float64)
    all_idx = np.arange(n)
    boxes = np.stack([np.interp(all_idx, found_idx, found_arr[:, j]) for j in range(4)], axis=1)
    boxes = np.round(smooth_boxes(boxes)).astype(np.int32)
    boxes[:, 0:2] = np.clip(boxes[:, 0:2], 0, height)
    boxes[:, 2:4] = np.clip(boxes[:, 2:4], 0, width)
    return boxes


def smooth_boxes(boxes: np.ndarray, radius: int = 4) -> np.ndarray:
    """Moving median then moving average over time: detector jitter out, real motion kept."""
    n = len(boxes)
    if n < 3:
        return boxes.astype(np.float64)
    padded = np.pad(boxes.astype(np.float64), ((radius, radius), (0, 0)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=0)
    med = np.median(windows, axis=-1)
    padded = np.pad(med, ((2, 2), (0, 0)), mode="edge")
    kernel = np.ones(5) / 5
    return np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(4)], axis=1)
