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
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np

from .engines.base import MouthGeometry, ReferenceFrame
from .faces import FaceError, detect_faces, load_face_det_results
from .fetch import Fetcher, FetchError
from .jpeg import ReferenceJpegs
from .landmarks import N_POINTS, Landmarks, track_landmarks
from .protocol import DEFAULT_CHARACTER, FRAME_HEIGHT, FRAME_WIDTH

log = logging.getLogger(__name__)

MAX_FRAMES = 900  # 30 s at 30 fps; longer videos are cut (memory: 0.75 MiB a frame)
MAX_DECODE_SIDE = 1280  # larger videos are scaled down while decoding (at most 2.6 MiB a frame)
FACE_SCALE = 3.0  # the crop is this many face sizes wide, when the video allows
FACE_CENTRE_HEIGHT = 0.45  # where the face centre sits in the crop, from the top
LANDMARKS_SUFFIX = ".landmarks.npz"


class CharacterError(Exception):
    """The character cannot be used; the message says why."""


@dataclass(frozen=True)
class Character:
    key: str
    frames: np.ndarray  # (N, 512, 512, 3) uint8 BGR, read-only
    boxes: np.ndarray  # (N, 4) int32 y1, y2, x1, x2 in 512 space
    landmarks: np.ndarray  # (N, 478, 2) float32 face-mesh points in 512 space

    def __post_init__(self) -> None:
        object.__setattr__(self, "mouths", Landmarks(self.landmarks).mouths())
        object.__setattr__(self, "jpegs", ReferenceJpegs())

    mouths: np.ndarray = field(init=False)  # (N, 4) float32 cx, cy, half_width, angle
    #: reference frames encoded once as spliceable JPEGs, shared by the character's sessions
    jpegs: ReferenceJpegs = field(init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes + self.landmarks.nbytes)

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
        return ReferenceFrame(i, self.frames[i], MouthGeometry(cx, cy, hw, angle), self.landmarks[i])


# --- building a character from a video ----------------------------------------------------------


def decode_video(path: Path, max_frames: int = MAX_FRAMES) -> list[np.ndarray]:
    """All frames (up to *max_frames*) as BGR arrays; any decoding problem is a CharacterError."""
    return decode_video_timed(path, max_frames)[0]


def decode_video_timed(path: Path, max_frames: int = MAX_FRAMES, progress: Callable[[int], None] | None = None) -> tuple[list[np.ndarray], list[float], float]:
    """Frames (BGR), their timestamps in seconds, and the scale they were decoded at.

    Videos larger than MAX_DECODE_SIDE are scaled down (uniformly) while decoding; coordinates
    given for the original video must be multiplied by the returned scale. A damaged tail is cut
    off with a warning.
    """
    frames: list[np.ndarray] = []
    times: list[float] = []
    scale = 1.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise CharacterError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            scale = min(1.0, MAX_DECODE_SIDE / max(stream.codec_context.width or 1, stream.codec_context.height or 1))
            for frame in container.decode(stream):
                if scale < 1.0:  # bounded memory for huge videos: they are cropped to a face anyway
                    frame = frame.reformat(width=2 * round(frame.width * scale / 2), height=2 * round(frame.height * scale / 2))
                frames.append(frame.to_ndarray(format="bgr24"))
                known = frame.pts is not None and stream.time_base is not None
                times.append(float(frame.pts * stream.time_base) if known else len(times) / 30.0)  # type: ignore[operator]
                if progress:
                    progress(1)
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
    return frames, times, scale


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


def square_frames(frames: list[np.ndarray], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop and scale *frames* to 512x512 around the faces in *boxes* (source coordinates).

    Returns the frames and the boxes in 512 space. A 512x512 video is taken as it is.
    """
    h, w = frames[0].shape[:2]
    if any(f.shape != frames[0].shape for f in frames):
        raise CharacterError("video frames change size mid-stream")
    if (h, w) == (FRAME_HEIGHT, FRAME_WIDTH):
        return np.stack(frames), boxes.astype(np.int32)
    x0, y0, side = face_crop(boxes, w, h)
    scale = FRAME_WIDTH / side
    interp = cv2.INTER_AREA if side > FRAME_WIDTH else cv2.INTER_CUBIC
    out = np.empty((len(frames), FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        crop = f[y0 : y0 + side, x0 : x0 + side]
        out[i] = crop if side == FRAME_WIDTH else cv2.resize(crop, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=interp)
    b = boxes.astype(np.float64)
    new_boxes = np.stack([(b[:, 0] - y0) * scale, (b[:, 1] - y0) * scale, (b[:, 2] - x0) * scale, (b[:, 3] - x0) * scale], axis=1)
    log.info("cropped %dx%d video to a %d px square at (%d, %d)", w, h, side, x0, y0)
    return out, np.clip(np.round(new_boxes), 0, FRAME_WIDTH).astype(np.int32)


def make_character(key: str, frames: np.ndarray, landmarks: np.ndarray, boxes: np.ndarray | None = None) -> Character:
    """A character from 512x512 frames and their landmarks (boxes default to the face oval)."""
    if frames.shape[1:] != (FRAME_HEIGHT, FRAME_WIDTH, 3):
        raise CharacterError(f"character frames must be {FRAME_WIDTH}x{FRAME_HEIGHT}, got {frames.shape[2]}x{frames.shape[1]}")
    if len(landmarks) != len(frames):
        raise CharacterError(f"landmarks cover {len(landmarks)} frames but the video has {len(frames)}")
    if boxes is None:
        boxes = Landmarks(landmarks).boxes()
    frames.flags.writeable = False
    landmarks = np.ascontiguousarray(landmarks, dtype=np.float32)
    landmarks.flags.writeable = False
    character = Character(key, frames, boxes, landmarks)
    log.info("character %s: %d frames, mouth %.0f px wide", key, len(frames), 2 * float(np.median(character.mouths[:, 2])))
    return character


def default_character_files() -> tuple[Path, Path]:
    """The embedded default character: its video and its landmarks."""
    base = resources.files("lipsync_stream") / "assets" / "default"
    return Path(str(base / "character.mp4")), Path(str(base / "character.landmarks.npz"))


def landmarks_path_for(video: Path) -> Path:
    """Where ``prepare`` puts a video's landmarks: ``NAME.landmarks.npz`` beside ``NAME.mp4``."""
    return video.with_name(video.stem + LANDMARKS_SUFFIX)


def load_default_character() -> Character:
    video, landmarks = default_character_files()
    return make_character(DEFAULT_CHARACTER, np.stack(decode_video(video)), Landmarks.load(landmarks).points)


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
            video, landmarks_file = default_character_files()
            square, _ = self._square_frames(video_ref, video, None)
            return make_character(DEFAULT_CHARACTER, square, Landmarks.load(landmarks_file).points)
        video = self.fetcher.resolve(video_ref)
        faces = self.fetcher.resolve(faces_ref) if faces_ref is not None else None
        square, square_boxes = self._square_frames(video_ref, video, faces)
        n = len(square)
        landmarks = self._prepared_landmarks(video_ref, n) if square_boxes is None else None
        if landmarks is None:
            key = f"{_file_digest(video)}-{n}-" + hashlib.sha256(b"" if square_boxes is None else square_boxes.tobytes()).hexdigest()[:12]
            landmarks = self._cached(f"landmarks/{key}.npy", (n, N_POINTS, 2), lambda: track_landmarks(square), f"landmarks for {video_ref}")
        return make_character(video_ref, square, landmarks, square_boxes)

    def _square_frames(self, video_ref: str, video: Path, faces: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The 512x512 frames, decoded once into the cache directory and memory-mapped from there.

        Every worker process maps the same file, so the operating system keeps one copy of a
        character in memory however many processes serve it.
        """
        key = _file_digest(video) + (f"-{_file_digest(faces)}" if faces is not None else "")
        base = self.fetcher.config.cache_dir / "characters" / key
        frames_path, boxes_path = base.with_name(key + ".frames.npy"), base.with_name(key + ".boxes.npy")
        if not (frames_path.is_file() and boxes_path.is_file()):
            frames, _, scale = decode_video_timed(video)
            n, (h, w) = len(frames), frames[0].shape[:2]
            if faces is not None:
                # The pickle speaks of the original video; frames may have been scaled down.
                orig_w, orig_h = round(w / scale), round(h / scale)
                given = load_face_det_results(faces, n, orig_w, orig_h)
                boxes: np.ndarray | None = np.clip(np.round(given * scale), 0, [h, h, w, w]).astype(np.int32) if scale < 1.0 else given
            elif (h, w) != (FRAME_HEIGHT, FRAME_WIDTH):
                boxes = self._cached(f"faces/{key}-{n}.npy", (n, 4), lambda: detect_faces(frames), f"face detection for {video_ref}")
            else:
                boxes = None  # already 512x512: the landmarks give the boxes
            square, square_boxes = square_frames(frames, boxes) if boxes is not None else (np.stack(frames), None)
            frames.clear()
            frames_path.parent.mkdir(parents=True, exist_ok=True)
            tag = f"{os.getpid()}.{threading.get_ident()}"
            tmp_frames, tmp_boxes = frames_path.with_name(f"{key}.{tag}.tmp.npy"), boxes_path.with_name(f"{key}.{tag}.boxes.tmp.npy")
            np.save(tmp_frames, square)
            np.save(tmp_boxes, np.zeros((0, 4), np.int32) if square_boxes is None else square_boxes)
            tmp_boxes.replace(boxes_path)
            tmp_frames.replace(frames_path)
            del square
        try:
            mapped = np.load(frames_path, mmap_mode="r", allow_pickle=False)
            boxes_arr = np.load(boxes_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            frames_path.unlink(missing_ok=True)
            raise CharacterError(f"decoded-character cache {frames_path.name} is unreadable ({exc}); try again") from None
        if mapped.ndim != 4 or mapped.shape[1:] != (FRAME_HEIGHT, FRAME_WIDTH, 3) or mapped.dtype != np.uint8:
            frames_path.unlink(missing_ok=True)
            raise CharacterError(f"decoded-character cache {frames_path.name} has the wrong shape; removed, try again")
        log.info("character %s: %d frames mapped from %s", video_ref, len(mapped), frames_path)
        return mapped, (None if len(boxes_arr) == 0 else boxes_arr.astype(np.int32))

    def _prepared_landmarks(self, video_ref: str, n: int) -> np.ndarray | None:
        """Landmarks that ``prepare`` wrote beside the video, when there are any."""
        base, dot, suffix = video_ref.rpartition(".")
        if not dot or "/" in suffix:
            return None
        try:
            path = self.fetcher.resolve(base + LANDMARKS_SUFFIX)
        except FetchError:
            return None
        points = Landmarks.load(path).points
        if len(points) != n:
            log.warning("ignoring %s: %d frames of landmarks for %d video frames", path.name, len(points), n)
            return None
        log.info("using prepared landmarks for %s", video_ref)
        return points

    def _cached(self, name: str, shape: tuple[int, ...], compute: Callable[[], np.ndarray], what: str) -> np.ndarray:
        """*compute*'s result, kept on disk under the cache directory by content key."""
        path = self.fetcher.config.cache_dir / name
        try:
            value = np.load(path, allow_pickle=False)
            if value.shape == shape:
                log.info("using cached %s", what)
                return value
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cache file %s: %s", path, exc)
        log.info("computing %s (%d frames)", what, shape[0])
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{threading.get_ident()}.tmp.npy")
        np.save(tmp, value)
        tmp.replace(path)
        return value
