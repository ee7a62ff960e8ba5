"""``lipsync-stream prepare VIDEO -o DIR``: turn any talking-head video into a character.

Writes, for ``NAME`` (the output directory's name unless given):

- ``NAME.mp4``: the 512x512 video at 30 fps, cropped around the face (H.264),
- ``NAME.pkl``: Wav2Lip-compatible ``face_det_results`` (one ``[face_crop, (y1, y2, x1, x2)]``
  per frame), so other tools can read the character too,
- ``NAME.landmarks.npz``: the 478 face-mesh points per frame, smoothed without lag.

Serve the directory with ``--asset-root`` and ask for ``NAME/NAME.mp4`` (the server finds the
landmarks beside the video); the pickle may be given as ``face_det_results``.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from ..engines.footage import MouthIndex
from ..wire.protocol import FPS
from .character import FRAME_HEIGHT, FRAME_WIDTH, LANDMARKS_SUFFIX, MAX_FRAMES, CharacterError
from .faces import FaceError, face_det_results
from .landmarks import Landmarks, track_landmarks
from .video import VideoReader, crop_square, detect_faces_streaming, face_crop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` wrote: the character's files and what it measured."""
    video: Path
    faces: Path
    landmarks: Path
    frames: int
    mouth_width: float  # median, pixels


def frames_30fps(path: Path, max_frames: int = MAX_FRAMES, progress: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """The frames of *path* (BGR) resampled to 30 fps by timestamp (the nearest earlier frame),
    as they are decoded: nothing else is held.

    Up to twice *max_frames* are decoded, in case the source runs faster than 30 fps.
    """
    emitted = 0
    pending: av.VideoFrame | None = None  # the latest frame, shown until the next one starts
    image: np.ndarray | None = None
    start: float | None = None
    rel = 0.0
    steps: list[float] = []
    with VideoReader(path, 2 * max_frames) as reader:
        for frame in reader.frames():
            t = float(frame.time) if frame.time is not None else reader.count / FPS
            start = t if start is None else start
            if pending is not None:
                steps.append(t - start - rel)
                while emitted < max_frames and emitted / FPS + 1e-6 < t - start:
                    image = pending.to_ndarray(format="bgr24") if image is None else image
                    yield image
                    emitted += 1
            rel, pending, image = t - start, frame, None
            if progress:
                progress(1)
            if emitted >= max_frames:
                return
    assert pending is not None  # VideoReader raises on a video with no frames
    step = float(np.median(steps)) if steps else 1.0 / FPS  # the last frame lasts this long
    n_out = min(max_frames, max(1, int(round((rel + step) * FPS))))
    image = pending.to_ndarray(format="bgr24")
    for _ in range(n_out - emitted):
        yield image


def read_video_30fps(path: Path, max_frames: int = MAX_FRAMES, progress: bool = False) -> list[np.ndarray]:
    """Frames of *path* resampled to 30 fps (:func:`frames_30fps`), all in memory: for tools."""
    with tqdm(desc="decoding", unit="frame", disable=not progress, leave=False) as bar:
        return list(frames_30fps(path, max_frames, bar.update))


def write_video(path: Path, frames: np.ndarray, crf: int = 18) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": str(crf), "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    tmp.replace(path)


def prepare(video: Path, out_dir: Path, name: str | None = None, max_frames: int = MAX_FRAMES, progress: bool = True) -> Prepared:
    """Make a character directory from *video*; FaceError/CharacterError say what is wrong."""
    video = Path(video)
    if not video.is_file():
        raise CharacterError(f"no such video: {video}")
    if not 0 < max_frames <= MAX_FRAMES:
        # The server loads no longer character: a longer one would be prepared, then refused.
        raise CharacterError(f"a character holds 1 to {MAX_FRAMES} frames ({MAX_FRAMES // FPS} s), not {max_frames}")
    name = name or out_dir.resolve().name
    # Two passes over the video, so that only the 512x512 crops are ever held: the face's
    # boxes first (every third frame, decoded small), then the frames cropped as they come.
    with VideoReader(video) as reader:
        width, height = reader.width, reader.height
    with tqdm(desc="finding the face", unit="frame", disable=not progress, leave=False) as bar:
        source_boxes = detect_faces_streaming(video, max_frames=2 * max_frames, seconds=max_frames / FPS, progress=bar.update)
    whole = (height, width) == (FRAME_HEIGHT, FRAME_WIDTH)  # a 512x512 video is taken as it is
    crop = (0, 0, FRAME_WIDTH) if whole else face_crop(source_boxes, width, height)
    square = np.empty((max_frames, FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)  # pages are touched as frames come
    n = 0
    with tqdm(desc="cropping", unit="frame", disable=not progress, leave=False) as bar:
        for image in frames_30fps(video, max_frames, bar.update):
            square[n] = crop_square(image, crop)
            n += 1
    square = square[:n]
    log.info("%s: %d frames at 30 fps, %dx%d%s", video.name, len(square), width, height, "" if whole else f", cropped to a {crop[2]} px square at ({crop[0]}, {crop[1]})")
    with tqdm(total=len(square), desc="landmarks", unit="frame", disable=not progress, leave=False) as bar:
        points = track_landmarks(list(square), progress=bar.update)
    landmarks = Landmarks(points)
    face_boxes = landmarks.boxes()

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = Prepared(out_dir / f"{name}.mp4", out_dir / f"{name}.pkl", out_dir / f"{name}{LANDMARKS_SUFFIX}", len(square), float(np.median(2 * landmarks.mouths()[:, 2])))
    write_video(paths.video, square)
    with open(paths.faces, "wb") as f:
        pickle.dump(face_det_results(list(square), face_boxes), f, protocol=4)
    landmarks.save(paths.landmarks)
    log.info("wrote %s, %s and %s (%d frames, mouth %.0f px wide)", paths.video, paths.faces.name, paths.landmarks.name, paths.frames, paths.mouth_width)
    index, found = MouthIndex.build(landmarks.points)
    if index is not None:
        log.info("mouths from the person's own frames: %s", found)
    else:
        log.warning("no usable mouth variety in this video: %s; its mouth will be warped instead of taken from its own frames (use a clip where the person talks)", found)
    if paths.mouth_width < 40:
        log.warning("the mouth is only %.0f px wide at 512x512: the face is small in this video; lip-sync will be coarse", paths.mouth_width)
    return paths


__all__ = ["FaceError", "Prepared", "prepare", "read_video_30fps"]
