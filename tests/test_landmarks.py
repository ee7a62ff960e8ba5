"""Face-mesh landmarks: found on real faces, filled and smoothed without lag, stored compactly."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_measured

from lipsync_stream.characters.character import load_default_character
from lipsync_stream.characters.faces import FaceError
from lipsync_stream.characters.landmarks import N_POINTS, FaceMesher, Landmarks, fill_gaps, smooth_track


def test_mesh_finds_the_default_mouth() -> None:
    c = load_default_character()
    with FaceMesher(video=False) as mesher:
        lm = mesher.landmarks(c.frames[0])
        assert mesher.landmarks(np.full((256, 256, 3), 90, np.uint8)) is None
    assert lm is not None and lm.shape == (N_POINTS, 2)
    assert np.abs(lm - c.landmarks[0]).mean() < 3.0  # the stored landmarks are this face's
    left, right = lm[61], lm[291]
    assert 80 <= right[0] - left[0] <= 120 and abs(0.5 * (left[1] + right[1]) - 300) < 15


def test_smoothing_has_no_lag() -> None:
    t = np.arange(60, dtype=np.float32)
    ramp = np.stack([t, 2 * t], axis=1)[:, None, :]  # a steady motion passes unchanged
    assert np.allclose(smooth_track(ramp), ramp, atol=1e-3)
    jitter = np.random.default_rng(0).normal(0, 1, (200, 1, 2)).astype(np.float32)
    assert smooth_track(jitter).std() < 0.75 * jitter.std()
    step = np.zeros((40, 1, 2), np.float32)
    step[20:] = 10.0
    smoothed = smooth_track(step)
    assert abs(float(smoothed[19, 0, 0] + smoothed[20, 0, 0]) - 10.0) < 1e-3  # symmetric about the jump


def test_short_gaps_are_filled_and_long_ones_named() -> None:
    pts = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 3, 2), np.float32)
    found = np.ones(10, bool)
    found[4:6] = False
    filled = fill_gaps(pts * found[:, None, None], found)
    assert np.allclose(filled, pts)
    found = np.ones(100, bool)
    found[30:60] = False
    with pytest.raises(FaceError, match=r"frames 30-59 \(1.00-2.00 s\)"):
        fill_gaps(np.zeros((100, 3, 2), np.float32), found)
    with pytest.raises(FaceError, match="no face"):
        fill_gaps(np.zeros((5, 3, 2), np.float32), np.zeros(5, bool))


def test_save_load_round_trip_within_a_sixteenth_of_a_pixel(tmp_path: Path) -> None:
    pts = np.random.default_rng(2).uniform(0, 512, (3, N_POINTS, 2)).astype(np.float32)
    Landmarks(pts).save(tmp_path / "x.landmarks.npz")
    back = Landmarks.load(tmp_path / "x.landmarks.npz", 900).points
    assert np.abs(back - pts).max() <= 1 / 32 + 1e-6
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(FaceError, match="cannot read landmarks"):
        Landmarks.load(tmp_path / "bad.npz", 900)


def test_mouth_geometry_and_boxes_from_landmarks() -> None:
    lm = load_default_character().landmarks[:5]
    mouths = Landmarks(lm).mouths()
    assert np.allclose(mouths[:, 0], 0.5 * (lm[:, 61, 0] + lm[:, 291, 0]))
    assert (mouths[:, 2] * 2 >= 80).all()
    boxes = Landmarks(lm).boxes()
    y1, y2, x1, x2 = boxes[0]
    assert y1 < mouths[0, 1] < y2 and x1 < mouths[0, 0] < x2


def test_landmarks_outside_any_frame_are_refused(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "far.npz", points=np.full((2, N_POINTS, 2), 30000, np.int16), scale=np.float32(1.0))
    with pytest.raises(FaceError, match="outside"):
        Landmarks.load(tmp_path / "far.npz", 900)
    np.savez_compressed(tmp_path / "float.npz", points=np.full((2, N_POINTS, 2), np.nan), scale=np.float32(16.0))
    with pytest.raises(FaceError, match="integer"):
        Landmarks.load(tmp_path / "float.npz", 900)


def write_npz_bomb(path: Path, frames: int) -> None:
    """An .npz whose 'points' claim *frames* frames of zeros: tiny on disk, huge inflated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i2", "fortran_order": False, "shape": (frames, N_POINTS, 2)})
    chunk = bytes(1 << 24)
    left = frames * N_POINTS * 2 * 2
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("points.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        buf = io.BytesIO()
        np.save(buf, np.float32(16.0))
        archive.writestr("scale.npy", buf.getvalue())


def test_a_landmarks_file_that_inflates_to_a_gibibyte_is_refused_before_inflating(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.landmarks.npz"
    write_npz_bomb(bomb, (1 << 30) // (N_POINTS * 4))
    assert bomb.stat().st_size < 2 * 1024 * 1024
    code = f"""
from pathlib import Path
from lipsync_stream.characters.faces import FaceError
from lipsync_stream.characters.landmarks import Landmarks
try:
    Landmarks.load(Path({str(bomb)!r}), 900)
except FaceError as exc:
    print("refused:", exc)
"""
    peak_mb, out = run_measured(code)
    assert "refused:" in out and "would inflate to 1073" in out, out
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB"  # the file inflated would be 1024 MB


def test_landmarks_for_more_frames_than_a_character_has_are_refused(tmp_path: Path) -> None:
    Landmarks(np.zeros((20, N_POINTS, 2), np.float32)).save(tmp_path / "long.landmarks.npz")
    with pytest.raises(FaceError, match="holds 20 frames; a character has 1 to 10"):
        Landmarks.load(tmp_path / "long.landmarks.npz", 10)
