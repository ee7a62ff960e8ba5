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
import contextlib
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..engines.base import MouthGeometry, ReferenceFrame
from ..engines.footage import Footage
from ..engines.mouthbank import InteriorBank
from ..jpeg import ReferenceJpegs
from ..logsafe import shown
from ..wire.protocol import DEFAULT_CHARACTER, FRAME_HEIGHT, FRAME_WIDTH
from .character_errors import CharacterBusy as CharacterBusy
from .character_errors import CharacterError as CharacterError
from .faces import FaceError, load_face_det_results
from .fetch import Fetcher, FetchError, evict_least_recently_used
from .landmarks import N_POINTS, Landmarks, LandmarkTracker, track_landmarks
from .video import MAX_FRAMES, FrameFile, VideoReader, crop_square, decode_video, detect_faces_streaming, face_crop, square_boxes, temporary_twin

log = logging.getLogger(__name__)

LOAD_NICE = 10  # character loads run at this nice value, below the render threads
LANDMARKS_SUFFIX = ".landmarks.npz"


@dataclass(frozen=True)
class Character:
    """A loaded character: its frames (memory-mapped), face boxes and landmarks, shared by sessions."""
    key: str
    frames: np.ndarray  # (N, 512, 512, 3) uint8 BGR, read-only
    boxes: np.ndarray  # (N, 4) int32 y1, y2, x1, x2 in 512 space
    landmarks: np.ndarray  # (N, 478, 2) float32 face-mesh points in 512 space
    boxes_given: bool = False  # the boxes came from a Wav2Lip face_det_results pickle (crops padded by its maker)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mouths", Landmarks(self.landmarks).mouths())
        object.__setattr__(self, "jpegs", ReferenceJpegs())
        object.__setattr__(self, "interiors", InteriorBank.from_frames(self.frames, self.landmarks))
        object.__setattr__(self, "footage", Footage.of(self.frames, self.landmarks))
        object.__setattr__(self, "memo", {})

    mouths: np.ndarray = field(init=False)  # (N, 4) float32 cx, cy, half_width, angle
    #: reference frames encoded once as spliceable JPEGs, shared by the character's sessions
    jpegs: ReferenceJpegs = field(init=False, repr=False, compare=False)
    #: its own open-mouth interiors, when the video opens its mouth (drawn otherwise)
    interiors: InteriorBank | None = field(init=False, repr=False, compare=False)
    #: its own frames as a source of real mouths, when they vary enough (the warp draws otherwise)
    footage: Footage | None = field(init=False, repr=False, compare=False)
    #: what engines work out once per reference frame (the mesh warp's mouth rigs), see ReferenceFrame.memo
    memo: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        """Memory it holds: frames (mapped), landmarks, and the reference JPEGs encoded so far."""
        return int(self.frames.nbytes + self.landmarks.nbytes + self.jpegs.nbytes + (self.interiors.nbytes if self.interiors else 0) + (self.footage.nbytes if self.footage else 0))

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
        return ReferenceFrame(i, self.frames[i], MouthGeometry(cx, cy, hw, angle), self.landmarks[i], self.boxes[i], self.boxes_given, self.interiors, self.footage, self.memo)


# --- decoding with bounded memory ---------------------------------------------------------------


def make_character(key: str, frames: np.ndarray, landmarks: np.ndarray, boxes: np.ndarray | None = None, boxes_given: bool = False) -> Character:
    """A character from 512x512 frames and their landmarks (boxes default to the face oval;
    *boxes_given*: they are a Wav2Lip pickle's crops, to be used as they are)."""
    if frames.shape[1:] != (FRAME_HEIGHT, FRAME_WIDTH, 3):
        raise CharacterError(f"character frames must be {FRAME_WIDTH}x{FRAME_HEIGHT}, got {frames.shape[2]}x{frames.shape[1]}")
    if len(landmarks) != len(frames):
        raise CharacterError(f"landmarks cover {len(landmarks)} frames but the video has {len(frames)}")
    if boxes is None:
        boxes = Landmarks(landmarks).boxes()
    frames.flags.writeable = False
    landmarks = np.ascontiguousarray(landmarks, dtype=np.float32)
    landmarks.flags.writeable = False
    character = Character(key, frames, boxes, landmarks, boxes_given and boxes is not None)
    source = "its own frames" if character.footage is not None else "a warp of its frames"
    log.info("character %s: %d frames, mouth %.0f px wide, mouths from %s", key, len(frames), 2 * float(np.median(character.mouths[:, 2])), source)
    return character


def default_character_files() -> tuple[Path, Path]:
    """The embedded default character: its video and its landmarks."""
    base = resources.files("lipsync_stream") / "assets" / "default"
    return Path(str(base / "character.mp4")), Path(str(base / "character.landmarks.npz"))


def landmarks_path_for(video: Path) -> Path:
    """Where ``prepare`` puts a video's landmarks: ``NAME.landmarks.npz`` beside ``NAME.mp4``."""
    return video.with_name(video.stem + LANDMARKS_SUFFIX)


def load_default_character() -> Character:
    """The embedded default character: a portrait animated with breathing, sway and a blink."""
    video, landmarks = default_character_files()
    return make_character(DEFAULT_CHARACTER, np.stack(decode_video(video)), Landmarks.load(landmarks, MAX_FRAMES).points)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


# --- the shared store ---------------------------------------------------------------------------


def _background_priority() -> None:
    """Run this thread (and the decoder threads it starts) at a lower CPU priority.

    Character loads are long and render threads short: under load, frames go first. On Linux
    the nice value is per thread and inherited by the threads a thread creates.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICE)


class CharacterStore:
    """Loads characters on demand and keeps the most recently used ones in memory.

    Loads run in a pool of their own (*max_loads* at once, at a lower CPU priority), never on
    the threads that render frames; a load that cannot start within *queue_timeout* seconds is
    refused with :class:`CharacterBusy`.
    """

    def __init__(self, fetcher: Fetcher, max_bytes: int = 2 * 1024**3, max_loads: int = 2, queue_timeout: float = 30.0, disk_max_bytes: int = 8 * 1024**3) -> None:
        self.fetcher = fetcher
        self.max_bytes = max_bytes
        self.disk_max_bytes = disk_max_bytes  # decoded characters on disk; least recently used go
        self.max_loads = max_loads
        self.queue_timeout = queue_timeout
        self._cache: OrderedDict[tuple[str, str | None], Character] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, str | None], asyncio.Future[Character]] = {}
        self._executor = ThreadPoolExecutor(max_loads, thread_name_prefix="load", initializer=_background_priority)
        self._slots: asyncio.Semaphore | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def cached(self, video_ref: str, faces_ref: str | None = None) -> Character | None:
        with self._lock:
            character = self._cache.get((video_ref, faces_ref))
            if character is not None:
                self._cache.move_to_end((video_ref, faces_ref))
            return character

    async def get(self, video_ref: str, faces_ref: str | None = None) -> Character:
        """The character for these references; concurrent callers share one load."""
        key = (video_ref, faces_ref)
        character = self.cached(*key)
        if character is not None:
            return character
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load_in_pool(video_ref, faces_ref))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(pending)

    async def _load_in_pool(self, video_ref: str, faces_ref: str | None) -> Character:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_loads)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout)
        except TimeoutError:
            raise CharacterBusy(
                f"the server is busy loading other characters ({self.max_loads} at a time) and this one waited {self.queue_timeout:g} s; try again later"
            ) from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.load, video_ref, faces_ref)
        finally:
            self._slots.release()

    def load(self, video_ref: str, faces_ref: str | None = None) -> Character:
        """Load synchronously (in a worker thread) and remember the result."""
        key = (video_ref, faces_ref)
        character = self.cached(*key)
        if character is not None:
            return character
        error: CharacterError | None = None
        try:
            character = self._build(video_ref, faces_ref)
        except (FetchError, FaceError) as exc:
            error = CharacterError(str(exc))
        if error is not None:
            # Raised outside the except block and dropped from this frame: no chain or cycle
            # keeps the failed load's frames (and what they hold) alive after the answer.
            try:
                raise error
            finally:
                error = None
        assert character is not None
        with self._lock:
            self._cache[key] = character
            self._cache.move_to_end(key)
            self._trim()
        return character

    def _trim(self) -> None:
        """Drop least recently used characters past max_bytes (their reference JPEGs count too)."""
        while len(self._cache) > 1 and sum(c.nbytes for c in self._cache.values()) > self.max_bytes:
            old_key, _ = self._cache.popitem(last=False)
            log.info("dropped character %s from memory", shown(old_key[0]))

    def _build(self, video_ref: str, faces_ref: str | None) -> Character:
        if video_ref == DEFAULT_CHARACTER and faces_ref is not None:
            raise CharacterError("face_det_results describes the faces of a video: give that video as video_reference_url (the default character has its own)")
        if video_ref == DEFAULT_CHARACTER:
            video, landmarks_file = default_character_files()
            frames, _ = self._square_frames(video_ref, video, None, self._content_key(video, None), None)
            return make_character(DEFAULT_CHARACTER, frames, Landmarks.load(landmarks_file, MAX_FRAMES).points)
        video = self.fetcher.resolve(video_ref)
        faces = self.fetcher.resolve(faces_ref) if faces_ref is not None else None
        prepared = self._prepared_landmarks(video_ref) if faces is None else None
        key = self._content_key(video, faces)
        landmarks_file = self.fetcher.config.cache_dir / "landmarks" / f"{key}.npy"
        # Landmarks are tracked while the frames are decoded, unless they are at hand already.
        tracker = LandmarkTracker() if prepared is None and not landmarks_file.is_file() else None
        try:
            frames, boxes = self._square_frames(video_ref, video, faces, key, tracker)
            n = len(frames)
            if prepared is not None and len(prepared) != n:
                log.warning("ignoring the prepared landmarks of %s: %d frames of landmarks for %d video frames", shown(video_ref), len(prepared), n)
                prepared = None
            if prepared is not None:
                log.info("using prepared landmarks for %s", shown(video_ref))
                landmarks = prepared
            else:
                fresh = tracker if tracker is not None and len(tracker) == n else None
                landmarks = self._cached(landmarks_file, (n, N_POINTS, 2), fresh.result if fresh else lambda: track_landmarks(frames), f"landmarks for {shown(video_ref)}")
        finally:
            if tracker is not None:
                tracker.close()
        return make_character(video_ref, frames, landmarks, boxes, boxes_given=faces is not None)

    @staticmethod
    def _content_key(video: Path, faces: Path | None) -> str:
        return _file_digest(video) + (f"-{_file_digest(faces)}" if faces is not None else "")

    def _square_frames(self, video_ref: str, video: Path, faces: Path | None, key: str, tracker: LandmarkTracker | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The 512x512 frames, decoded once into the cache directory (under the content *key*)
        and memory-mapped from there.

        Every worker process maps the same file, so the operating system keeps one copy of a
        character in memory however many processes serve it.
        """
        base = self.fetcher.config.cache_dir / "characters"
        frames_path, boxes_path = base / f"{key}.frames.npy", base / f"{key}.boxes.npy"
        if frames_path.is_file() and boxes_path.is_file():
            with contextlib.suppress(OSError):
                os.utime(frames_path)  # used now: the last to be evicted
        else:
            self._decode(video_ref, video, faces, frames_path, boxes_path, tracker)
            evict_least_recently_used(base, "*.frames.npy", self.disk_max_bytes, "decoded-character cache", (".boxes.npy",))
        try:
            mapped = np.load(frames_path, mmap_mode="r", allow_pickle=False)
            boxes_arr = np.load(boxes_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            frames_path.unlink(missing_ok=True)
            raise CharacterError(f"decoded-character cache {frames_path.name} is unreadable ({exc}); try again") from None
        if mapped.ndim != 4 or mapped.shape[1:] != (FRAME_HEIGHT, FRAME_WIDTH, 3) or mapped.dtype != np.uint8 or not len(mapped):
            frames_path.unlink(missing_ok=True)
            raise CharacterError(f"decoded-character cache {frames_path.name} has the wrong shape; removed, try again")
        log.info("character %s: %d frames mapped from %s", shown(video_ref), len(mapped), frames_path)
        return mapped, (None if len(boxes_arr) == 0 else boxes_arr.astype(np.int32))

    def _decode(self, video_ref: str, video: Path, faces: Path | None, frames_path: Path, boxes_path: Path, tracker: LandmarkTracker | None) -> None:
        """Decode *video* to 512x512 frames straight into *frames_path*, one frame at a time.

        The face boxes that fix the crop come first: from the pickle (checked before decoding),
        or from a detection pass over small frames. The second pass crops each frame as it is
        decoded. Nothing of the size of the video is ever in memory.
        """
        with VideoReader(video) as probe:
            w, h, scale = probe.width, probe.height, probe.scale
            source_w, source_h = probe.source_width, probe.source_height
        boxes: np.ndarray | None = None
        if faces is not None:
            boxes = load_face_det_results(faces, source_w, source_h)
            if scale < 1.0:  # the pickle speaks of the original video
                boxes = np.clip(np.round(boxes * scale), 0, [h, h, w, w]).astype(np.int32)
        elif (w, h) != (FRAME_WIDTH, FRAME_HEIGHT):
            log.info("finding the face in %s", shown(video_ref))
            boxes = detect_faces_streaming(video)
        crop = face_crop(boxes[:MAX_FRAMES], w, h) if boxes is not None and (w, h) != (FRAME_WIDTH, FRAME_HEIGHT) else None
        out = FrameFile(frames_path)
        try:
            with VideoReader(video) as reader:
                for frame in reader.frames():
                    image = frame.to_ndarray(format="bgr24")
                    square = image if crop is None else crop_square(image, crop)
                    out.append(square)
                    if tracker is not None:
                        tracker.add(square)
                n, cut = reader.count, reader.cut
            if boxes is not None:
                if len(boxes) != n and not (cut and len(boxes) > n):
                    what = "face_det_results has" if faces is not None else "face detection found"
                    raise CharacterError(f"{what} {len(boxes)} entries but the video has {n} frames")
                boxes = boxes[:n]
                if crop is not None:
                    boxes = square_boxes(boxes, crop)
                    log.info("cropped %dx%d video to a %d px square at (%d, %d)", w, h, crop[2], crop[0], crop[1])
            tmp_boxes = temporary_twin(boxes_path)
            np.save(tmp_boxes, np.zeros((0, 4), np.int32) if boxes is None else boxes.astype(np.int32))
            tmp_boxes.replace(boxes_path)
            out.finish()
        finally:
            out.abort()

    def _prepared_landmarks(self, video_ref: str) -> np.ndarray | None:
        """Landmarks that ``prepare`` wrote beside the video, when there are any."""
        base, dot, suffix = video_ref.rpartition(".")
        if not dot or "/" in suffix:
            return None
        try:
            path = self.fetcher.resolve(base + LANDMARKS_SUFFIX)
        except FetchError:
            return None
        return Landmarks.load(path, MAX_FRAMES).points

    def _cached(self, path: Path, shape: tuple[int, ...], compute: Callable[[], np.ndarray], what: str) -> np.ndarray:
        """*compute*'s result, kept on disk under the cache directory by content key."""
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
        tmp = temporary_twin(path)
        np.save(tmp, value)
        tmp.replace(path)
        return value
