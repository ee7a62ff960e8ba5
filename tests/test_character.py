"""Characters: decoding, cropping without stretching, ping-pong, the shared store, the default."""

from __future__ import annotations

import asyncio
import pickle
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import run_measured

from lipsync_stream.characters import character as character_module
from lipsync_stream.characters.character import Character, CharacterError, CharacterStore, load_default_character
from lipsync_stream.characters.faces import face_det_results
from lipsync_stream.characters.fetch import FetchConfig, Fetcher
from lipsync_stream.characters.video import VideoReader, crop_square, decode_video, face_crop, square_boxes


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"crf": "18"})
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))


def test_ping_pong_never_jumps() -> None:
    c = Character("x", np.zeros((4, 1, 1, 3), np.uint8), np.zeros((4, 4), np.int32), np.zeros((4, 478, 2), np.float32))
    assert [c.ref_index(k) for k in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    single = Character("y", np.zeros((1, 1, 1, 3), np.uint8), np.zeros((1, 4), np.int32), np.zeros((1, 478, 2), np.float32))
    assert single.ref_index(7) == 0


def test_default_character_is_embedded_and_big_enough() -> None:
    c = load_default_character()
    assert c.frames.shape[1:] == (512, 512, 3) and len(c) >= 60
    assert not c.frames.flags.writeable
    assert (2 * c.mouths[:, 2]).min() >= 80  # mouth width in pixels
    # it moves (breathing, blinks) but stays the same person: consecutive frames are close
    steps = np.abs(np.diff(c.frames[:, ::8, ::8].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert steps.max() < 8 and np.abs(c.frames[0].astype(int) - c.frames[len(c) // 2].astype(int)).mean() > 0.5


def test_crop_is_square_around_the_face_and_never_stretches() -> None:
    # a wide 1280x720 video with the face right of centre
    boxes = np.array([[200, 400, 800, 1000]] * 3)
    x0, y0, side = face_crop(boxes, 1280, 720)
    assert side == 600 and 0 <= y0 and y0 + side <= 720 and x0 <= 800 and x0 + side >= 1000
    # a circle drawn on the source stays a circle: the scale is uniform
    frame = np.zeros((720, 1280, 3), np.uint8)
    import cv2

    cv2.circle(frame, (900, 300), 60, (255, 255, 255), -1)
    square = crop_square(frame, (x0, y0, side))
    new_boxes = square_boxes(boxes[:1], (x0, y0, side))
    assert square.shape == (512, 512, 3)
    ys, xs = np.nonzero(square[:, :, 0] > 128)
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 2
    assert new_boxes[0, 3] - new_boxes[0, 2] == pytest.approx(200 * 512 / 600, abs=1)


def test_broken_video_is_a_character_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(CharacterError, match="cannot decode|no video|no frames"):
        decode_video(bad)


@pytest.fixture
def store(tmp_path: Path) -> CharacterStore:
    root = tmp_path / "assets"
    root.mkdir()
    return CharacterStore(Fetcher(FetchConfig(asset_roots=[root], cache_dir=tmp_path / "cache")))


def _face_video(store: CharacterStore, name: str = "face.mp4", n: int = 6) -> tuple[Path, list[np.ndarray]]:
    # the default character, letterboxed into a 640x480 video: a real face at a known place
    src = load_default_character().frames[:n]
    frames = []
    for f in src:
        big = np.zeros((480, 640, 3), np.uint8)
        big[0:480, 100:580] = f[16:496, 16:496]
        frames.append(big)
    path = store.fetcher.roots[0] / name
    write_video(path, frames)
    return path, frames


def _no_face_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("faces were detected or tracked again")

    monkeypatch.setattr(character_module, "detect_faces_streaming", refuse)
    monkeypatch.setattr(character_module, "LandmarkTracker", refuse)
    monkeypatch.setattr(character_module, "track_landmarks", refuse)


def test_store_detects_faces_once_and_shares_the_character(store: CharacterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _face_video(store)
    a = store.load("face.mp4")
    assert a.frames.shape == (6, 512, 512, 3)
    assert store.load("face.mp4") is a
    # a new process (a new store) takes frames, boxes and landmarks from the disk cache
    _no_face_work(monkeypatch)
    fresh = CharacterStore(store.fetcher)
    again = fresh.load("face.mp4")
    assert np.array_equal(again.boxes, a.boxes) and np.array_equal(again.frames, a.frames) and np.allclose(again.landmarks, a.landmarks)


def test_store_uses_a_wav2lip_pickle(store: CharacterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    path, frames = _face_video(store)
    boxes = np.array([[60, 420, 150, 530]] * len(frames))
    (path.parent / "face.pkl").write_bytes(pickle.dumps(face_det_results(frames, boxes)))
    monkeypatch.setattr(character_module, "detect_faces_streaming", lambda *_a: pytest.fail("detection ran"))
    c = store.load("face.mp4", "face.pkl")
    assert c.frames.shape[0] == len(frames)
    # the crop follows the pickle: its box (120x150 px wide... 360x380 px) is centred in the square
    assert c.boxes[0, 1] - c.boxes[0, 0] == pytest.approx(360 * 512 / 480, abs=2)
    # its maker padded those crops: the learned engines use them as given
    assert c.boxes_given and c.reference(0).box_given


def test_store_reports_bad_references(store: CharacterStore) -> None:
    with pytest.raises(CharacterError, match="outside|escapes"):
        store.load("../x.mp4")
    with pytest.raises(CharacterError, match="face_det_results describes the faces of a video"):
        store.load("default", "faces.pkl")
    _face_video(store)
    (store.fetcher.roots[0] / "face.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(CharacterError, match="os.system"):
        store.load("face.mp4", "face.pkl")


async def test_concurrent_requests_share_one_load(store: CharacterStore) -> None:
    _face_video(store)
    calls = 0
    original = store._build

    def counting(*args: object) -> Character:
        nonlocal calls
        calls += 1
        return original(*args)  # type: ignore[arg-type]

    store._build = counting  # type: ignore[method-assign]
    results = await asyncio.gather(*(store.get("face.mp4") for _ in range(5)))
    assert calls == 1 and all(r is results[0] for r in results)


def test_lru_drops_least_recently_used(store: CharacterStore) -> None:
    _face_video(store, "a.mp4")
    _face_video(store, "b.mp4")
    one = store.load("a.mp4")
    store.max_bytes = int(one.nbytes * 1.5)
    store.load("b.mp4")
    assert store.cached("a.mp4") is None and store.cached("b.mp4") is not None


def test_huge_videos_are_scaled_down_while_decoding_and_pickles_follow(store: CharacterStore) -> None:
    src = load_default_character().frames[:3]
    frames = []
    for f in src:
        big = np.zeros((1440, 2560, 3), np.uint8)
        big[400:1424, 1000:2024] = cv2.resize(f, (1024, 1024))
        frames.append(big)
    path = store.fetcher.roots[0] / "huge.mp4"
    write_video(path, frames)
    decoded = decode_video(path)
    with VideoReader(path) as reader:
        scale = reader.scale
    assert decoded[0].shape == (720, 1280, 3) and scale == pytest.approx(0.5)
    boxes = np.array([[500, 1300, 1150, 1900]] * 3)  # in the original 2560x1440 video
    (path.parent / "huge.pkl").write_bytes(pickle.dumps(face_det_results(frames, boxes)))
    c = store.load("huge.mp4", "huge.pkl")
    assert c.frames.shape == (3, 512, 512, 3)
    # the 192 px mouth of the original, halved by decoding, then 720 px cropped to 512: about 68 px
    assert 55 < 2 * float(c.mouths[0, 2]) < 80


def _canvas_video(path: Path, side: int, n: int) -> None:
    """The default character at the centre of a side x side canvas, n frames (encoded fast)."""
    src = load_default_character().frames
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"crf": "28", "preset": "ultrafast"})
        s.width = s.height = side
        s.pix_fmt = "yuv420p"
        canvas = np.full((side, side, 3), 70, np.uint8)
        o = (side - 512) // 2
        for i in range(n):
            canvas[o : o + 512, o : o + 512] = src[i % len(src)]
            vf = av.VideoFrame.from_ndarray(canvas, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, 30)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))


STORE_CODE = """
from pathlib import Path
from lipsync_stream.characters.character import CharacterError, CharacterStore
from lipsync_stream.characters.fetch import FetchConfig, Fetcher
store = CharacterStore(Fetcher(FetchConfig(asset_roots=[Path({root!r})], cache_dir=Path({cache!r}))))
def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
"""


def test_a_large_video_loads_within_bounded_memory(tmp_path: Path) -> None:
    # 200 frames of 1280x1280 are 940 MB decoded at full size: the load must never hold them.
    root = tmp_path / "assets"
    root.mkdir()
    _canvas_video(root / "big.mp4", 1280, 200)
    code = STORE_CODE.format(root=str(root), cache=str(tmp_path / "cache")) + """
c = store.load("big.mp4")
print("LOADED", c.frames.shape, 2 * float(c.mouths[:, 2].mean()))
"""
    peak_mb, out = run_measured(code)
    assert "LOADED (200, 512, 512, 3)" in out, out
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB while loading"


def test_failed_loads_give_their_memory_back(tmp_path: Path) -> None:
    # A pickle with one entry too many fails only once the whole video is decoded ("late").
    root = tmp_path / "assets"
    root.mkdir()
    _canvas_video(root / "face.mp4", 720, 30)
    boxes = np.array([[200, 520, 200, 520]] * 31)
    frames = [np.zeros((720, 720, 3), np.uint8)] * 31
    (root / "face.pkl").write_bytes(pickle.dumps(face_det_results(frames, boxes)))
    code = STORE_CODE.format(root=str(root), cache=str(tmp_path / "cache")) + """
def fail_once():
    try:
        store.load("face.mp4", "face.pkl")
    except CharacterError as exc:
        assert "31 entries but the video has 30 frames" in str(exc), exc
    else:
        raise AssertionError("loaded")
fail_once()
start = rss_mb()
for _ in range(50):
    fail_once()
print("GROWTH_MB", rss_mb() - start)
"""
    _, out = run_measured(code)
    growth = float(out.split("GROWTH_MB")[1].split()[0])
    assert growth < 200, f"RSS grew by {growth:.0f} MB over 50 failed loads"
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # nothing half-written is left


def test_a_video_that_changes_size_mid_stream_is_named(store: CharacterStore) -> None:
    sizes = [(320, 240)] * 3 + [(640, 480)] * 3
    jpegs = [cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))[1].tobytes() for w, h in sizes]
    (store.fetcher.roots[0] / "grows.mjpeg").write_bytes(b"".join(jpegs))
    with pytest.raises(CharacterError, match=r"grows.mjpeg changes frame size at frame 3 \(320x240 to 640x480\)"):
        store.load("grows.mjpeg")


@pytest.mark.parametrize("box", [(float("inf"), 400, 100, 500), (10**400, 400, 100, 500), (float("nan"), 1, 2, 3)])
def test_face_boxes_that_are_not_finite_numbers_are_named(store: CharacterStore, box: tuple) -> None:
    path, frames = _face_video(store)
    entries = face_det_results(frames, np.array([[60, 420, 150, 530]] * len(frames)))
    entries[3][1] = box
    (path.parent / "face.pkl").write_bytes(pickle.dumps(entries))
    with pytest.raises(CharacterError, match=r"face_det_results\[3\]\[1\] holds something that is not a finite number"):
        store.load("face.mp4", "face.pkl")


def test_videos_too_large_to_decode_are_refused_before_decoding(store: CharacterStore) -> None:
    path = store.fetcher.roots[0] / "giant.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 8192, 4096, "yuv420p"
        vf = av.VideoFrame(8192, 4096, "yuv420p")
        vf.pts, vf.time_base = 0, Fraction(1, 30)
        c.mux(s.encode(vf))
        c.mux(s.encode(None))
    with pytest.raises(CharacterError, match="8192x4096: more than the 16 megapixels"):
        store.load("giant.mp4")


def test_reference_jpegs_count_in_the_character_memory() -> None:
    c = load_default_character()
    before = c.nbytes
    c.jpegs.get(0, c.frames[0], 85)
    assert c.nbytes > before + 10_000


def test_decoded_characters_on_disk_are_kept_under_a_cap(store: CharacterStore) -> None:
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        _face_video(store, name, n=3 + "abc".index(name[0]))  # three different videos
    store.disk_max_bytes = 9 * 512 * 512 * 3 + 1024  # b and c (4 + 5 frames), not a as well
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        store.load(name)
    decoded = sorted((store.fetcher.config.cache_dir / "characters").glob("*.frames.npy"))
    assert len(decoded) == 2 and len(list(decoded[0].parent.glob("*.boxes.npy"))) == 2
    # the evicted one is decoded again when asked for, from a fresh store
    assert CharacterStore(store.fetcher).load("a.mp4").frames.shape == (3, 512, 512, 3)
