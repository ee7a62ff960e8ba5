"""``prepare``: any talking-head video becomes a character the server can use."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync_stream.characters.character import CharacterError, CharacterStore, load_default_character
from lipsync_stream.characters.faces import FaceError, boxes_from_face_det_results, safe_unpickle
from lipsync_stream.characters.fetch import FetchConfig, Fetcher
from lipsync_stream.characters.landmarks import Landmarks
from lipsync_stream.characters.prepare import prepare, read_video_30fps
from lipsync_stream.characters.video import decode_video
from lipsync_stream.cli import main


def write_clip(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "18"})
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480, 25 fps, 2 s clip with the default character's face off-centre."""
    src = load_default_character().frames
    frames = []
    for i in range(50):
        canvas = np.full((480, 640, 3), 40, np.uint8)
        canvas[20:468, 150:598] = src[i % len(src)][40:488, 32:480]
        frames.append(canvas)
    return write_clip(tmp_path_factory.mktemp("clip") / "talk.mp4", frames, 25)


def test_frames_are_resampled_to_30_fps(clip: Path) -> None:
    frames = read_video_30fps(clip)
    assert len(frames) == 60 and frames[0].shape == (480, 640, 3)  # 2 s at 30 fps


def test_prepare_writes_a_complete_character(clip: Path, tmp_path: Path) -> None:
    out = prepare(clip, tmp_path / "anna", progress=False)
    assert out.video == tmp_path / "anna" / "anna.mp4" and out.frames == 60
    frames = decode_video(out.video)
    assert len(frames) == 60 and frames[0].shape == (512, 512, 3)
    boxes = boxes_from_face_det_results(safe_unpickle(out.faces.read_bytes()), 60, 512, 512)
    lm = Landmarks.load(out.landmarks, 900)
    assert len(lm) == 60
    mouths = lm.mouths()
    assert (boxes[:, 0] < mouths[:, 1]).all() and (mouths[:, 1] < boxes[:, 1]).all()
    assert out.mouth_width > 60  # the face fills a good part of the frame

    # the server finds the landmarks beside the video and computes nothing
    store = CharacterStore(Fetcher(FetchConfig(asset_roots=[tmp_path], cache_dir=tmp_path / "cache")))
    character = store.load("anna/anna.mp4")
    assert np.allclose(character.landmarks, lm.points)
    assert not (tmp_path / "cache" / "landmarks").exists()
    # and the Wav2Lip pickle works as face_det_results too
    assert store.load("anna/anna.mp4", "anna/anna.pkl").frames.shape == (60, 512, 512, 3)


def test_video_without_a_face_is_refused_clearly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [cv_noise for cv_noise in (rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(10))]
    clip = write_clip(tmp_path / "noface.mp4", frames, 30)
    with pytest.raises(FaceError, match="no face"):
        prepare(clip, tmp_path / "x", progress=False)
    assert main(["prepare", str(clip), "-o", str(tmp_path / "y")]) == 1
    assert main(["prepare", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "y")]) == 1


def test_a_character_longer_than_the_server_loads_is_refused_before_any_work(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CharacterError, match="1 to 900 frames"):
        prepare(clip, tmp_path / "long", max_frames=1800, progress=False)
    assert main(["prepare", str(clip), "-o", str(tmp_path / "long"), "--max-seconds", "60"]) == 1
    assert not (tmp_path / "long").exists()
