"""Characters: a looping 512x512 face video with per-frame face boxes and mouth positions.

A character is decoded once per process and shared by every session that asks for it (a bounded
LRU keyed by its references, with concurrent first requests sharing one load). Videos are
brought to 512x512 by a fixed square crop around the face, scaled uniformly (never stretched).
Face detection results computed on load are cached on disk, keyed by the video's content.
Output frame *k* uses reference frame ``ref_index(k)``: the video plays forwards then backwards
(ping-pong), so the loop never jumps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np

from .engines.base import MouthGeometry, ReferenceFrame
from .faces import FaceError, FaceTrack, detect_faces, estimate_mouths, load_face_det_results
from .fetch import Fetcher, FetchError
from .protocol import DEFAULT_CHARACTER, FRAME_HEIGHT, FRAME_WIDTH

log = logging.getLogger(__name__)

MAX_FRAMES = 900  # 30 s at 30 fps; longer videos are cut (memory: 0.75 MiB a frame)
FACE_SCALE = 3.0  # the crop is this many face sizes wide, when the video allows
FACE_CENTRE_HEIGHT = 0.45  # where the face centre sits in the crop, from the top


class CharacterError(Exception):
    """The character cannot be used; the message says why."""


@dataclass(frozen=True)
class Character:
    key: str
    frames: np.ndarray  # (N, 512, 512, 3) uint8 BGR, read-only
    boxes: np.ndarray  # (N, 4) int32 y1, y2, x1, x2 in 512 space
    mouths: np.ndarray  # (N, 4) float32 cx, cy, half_width, angle

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)

    def ref_index(self, k: int) -> int:
        """Reference frame for output frame *k*: 0, 1, ..., N-1, N-2, ..., 1, 0, 1, ..."""
        n = len(self.frames)
        if n == 1:
            return 0
        m = k % (2 * n - 2)
        return m if m < n else 2 * n - 2 - m

    def reference(self, k: int) -> ReferenceFrame:
        i = self.ref_index(k)
        cx, cy, hw, angle = (float(v) for v in self.mouths[i])
        return ReferenceFrame(i, self.frames[i], MouthGeometry(cx, cy, hw, angle))


# --- building a character from a video ----------------------------------------------------------


def decode_video(path: Path, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """All frames (up to *max_frames*) as BGR arrays; any decoding problem is a CharacterError."""
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CharacterError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="bgr24"))
                if len(frames) >= max_frames:
                    log.warning("%s is longer than %d frames; using the first %d", path.name, max_frames, max_frames)
                    break
    except CharacterError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        if not frames:
            raise CharacterError(f"cannot decode video {path.name}: {exc}") from None
        log.warning("%s is damaged after frame %d (%s); using the frames before it", path.name, len(frames), exc)
    if not frames:
        raise CharacterError(f"video {path.name} has no frames")
    return frames


def face_crop(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int]:
    """A fixed square (x0, y0, side) around the face, inside the frame."""
    b = boxes.astype(np.float64)
    face = float(np.median(np.maximum(b[:, 1] - b[:, 0], b[:, 3] - b[:, 2])))
    cx = float(np.median(0.5 * (b[:, 2] + b[:, 3])))
    cy = float(np.median(0.5 * (b[:, 0] + b[:, 1])))
    side = int(round(min(min(width, height), max(FACE_SCALE * face, 64.0))))
    x0 = int(round(np.clip(cx - side / 2, 0, width - side)))
    y0 = int(round(np.clip(cy - FACE_CENTRE_HEIGHT * side, 0, height - side)))
    return x0, y0, side


def build_character(key: str, frames: list[np.ndarray], boxes: np.ndarray) -> Character:
    """Crop and scale *frames* to 512x512 around the faces in *boxes* (source coordinates)."""
    h, w = frames[0].shape[:2]
    if any(f.shape != frames[0].shape for f in frames):
        raise CharacterError("video frames change size mid-stream")
    x0, y0, side = face_crop(boxes, w, h)
    scale = FRAME_WIDTH / side
    interp = cv2.INTER_AREA if side > FRAME_WIDTH else cv2.INTER_CUBIC
    out = np.empty((len(frames), FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        crop = f[y0 : y0 + side, x0 : x0 + side]
        out[i] = crop if side == FRAME_WIDTH else cv2.resize(crop, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=interp)
    b = boxes.astype(np.float64)
    new_boxes = np.stack([(b[:, 0] - y0) * scale, (b[:, 1] - y0) * scale, (b[:, 2] - x0) * scale, (b[:, 3] - x0) * scale], axis=1)
    new_boxes = np.clip(np.round(new_boxes), 0, FRAME_WIDTH).astype(np.int32)
    mouths = estimate_mouths(out, new_boxes)
    out.flags.writeable = False
    log.info("character %s: %d frames %dx%d, crop %d px at (%d, %d)", key, len(out), w, h, side, x0, y0)
    return Character(key, out, new_boxes, mouths)


def load_prepared(key: str, video: Path, track: FaceTrack) -> Character:
    """A character whose video is already 512x512 and whose faces and mouths are known."""
    frames = decode_video(video)
    if frames[0].shape != (FRAME_HEIGHT, FRAME_WIDTH, 3):
        raise CharacterError(f"prepared character video must be {FRAME_WIDTH}x{FRAME_HEIGHT}, got {frames[0].shape[1]}x{frames[0].shape[0]}")
    if len(track.boxes) != len(frames) or len(track.mouths) != len(frames):
        raise CharacterError(f"face track has {len(track.boxes)} entries but the video has {len(frames)} frames")
    arr = np.stack(frames)
    arr.flags.writeable = False
    return Character(key, arr, track.boxes, track.mouths)


def default_character_files() -> tuple[Path, Path]:
    base = resources.files("lipsync_stream") / "assets" / "default"
    return Path(str(base / "character.mp4")), Path(str(base / "faces.npz"))


def load_default_character() -> Character:
    video, faces = default_character_files()
    return load_prepared(DEFAULT_CHARACTER, video, FaceTrack.load(faces))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


# --- the shared store ---------------------------------------------------------------------------


class CharacterStore:
    """Loads characters on demand and keeps the most recently used ones in memory."""

    def __init__(self, fetcher: Fetcher, max_bytes: int = 2 * 1024**3) -> None:
        self.fetcher = fetcher
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, str | None], Character] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str | None], asyncio.Future[Character]] = {}

    def cached(self, video_ref: str, faces_ref: str | None = None) -> Character | None:
        with self._lock:
            character = self._cache.get((video_ref, faces_ref))
            if character is not None:
                self._cache.move_to_end((video_ref, faces_ref))
            return character

    async def get(self, video_ref: str, faces_ref: str | None = None, executor: Executor | None = None) -> Character:
        """The character for these references; concurrent callers share one load."""
        key = (video_ref, faces_ref)
        character = self.cached(*key)
        if character is not None:
            return character
        pending = self._inflight.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = asyncio.ensure_future(loop.run_in_executor(executor, self.load, video_ref, faces_ref))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(pending)

    def load(self, video_ref: str, faces_ref: str | None = None) -> Character:
        """Load synchronously (in a worker thread) and remember the result."""
        key = (video_ref, faces_ref)
        character = self.cached(*key)
        if character is not None:
            return character
        try:
            character = self._build(video_ref, faces_ref)
        except (FetchError, FaceError) as exc:
            raise CharacterError(str(exc)) from None
        with self._lock:
            self._cache[key] = character
            self._cache.move_to_end(key)
            while len(self._cache) > 1 and sum(c.nbytes for c in self._cache.values()) > self.max_bytes:
                old_key, _ = self._cache.popitem(last=False)
                log.info("dropped character %s from memory", old_key[0])
        return character

    def _build(self, video_ref: str, faces_ref: str | None) -> Character:
        if video_ref == DEFAULT_CHARACTER and faces_ref is None:
            return load_default_character()
        video = self.fetcher.resolve(video_ref)
        frames = decode_video(video)
        h, w = frames[0].shape[:2]
        if faces_ref is not None:
            boxes = load_face_det_results(self.fetcher.resolve(faces_ref), len(frames), w, h)
            return build_character(video_ref, frames, boxes)
        # Faces detected on load are cached on disk by video content.
        boxes_path = self.fetcher.config.cache_dir / "faces" / f"{_file_digest(video)}-{len(frames)}.npy"
        try:
            boxes = np.load(boxes_path, allow_pickle=False)
            if boxes.shape == (len(frames), 4):
                log.info("using cached face detection for %s", video_ref)
                return build_character(video_ref, frames, boxes)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable face cache %s: %s", boxes_path, exc)
        log.info("detecting faces in %s (%d frames)", video_ref, len(frames))
        boxes = detect_faces(frames)
        boxes_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = boxes_path.with_name(f"{boxes_path.stem}.{threading.get_ident()}.tmp.npy")
        np.save(tmp, boxes)
        tmp.replace(boxes_path)
        return build_character(video_ref, frames, boxes)
