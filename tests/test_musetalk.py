"""The MuseTalk engine: the published folder layout loads (random weights, tiny configurations of
the same classes) and runs end to end through the server; bad folders are refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from musetalk_models import TINY_UNET, make_model_dir  # noqa: E402

from lipsync_stream.characters.character import load_default_character  # noqa: E402
from lipsync_stream.characters.fetch import FetchConfig  # noqa: E402
from lipsync_stream.client import decode_image, stream_audio  # noqa: E402
from lipsync_stream.neural import CheckpointError  # noqa: E402
from lipsync_stream.neural.musetalk import FACE_SIZE, MuseTalkFiles, MuseTalkItem, MuseTalkRunner  # noqa: E402
from lipsync_stream.serve.runner import running_server  # noqa: E402
from lipsync_stream.serve.server_config import ServerConfig  # noqa: E402
from lipsync_stream.wire.protocol import SessionParams, frames_for_samples  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("musetalk") / "models")


def test_a_folder_missing_a_file_is_refused_naming_it(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "m")
    (copy / "whisper" / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="whisper/preprocessor_config.json"):
        MuseTalkFiles.find(copy)
    with pytest.raises(CheckpointError, match="is not one"):
        MuseTalkFiles.find(copy / "musetalkV15" / "unet.pth")


def test_weights_of_another_layout_are_refused_by_name(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "m")
    other = dict(TINY_UNET, block_out_channels=[16, 32])
    from diffusers import UNet2DConditionModel

    torch.save(UNet2DConditionModel(**{k: v for k, v in other.items() if not k.startswith("_")}).state_dict(), copy / "musetalkV15" / "unet.pth")
    with pytest.raises(CheckpointError, match="layout"):
        MuseTalkRunner(MuseTalkFiles.find(copy))


def test_batched_output_equals_one_at_a_time(model_dir: Path, speech: np.ndarray) -> None:
    runner = MuseTalkRunner(MuseTalkFiles.find(model_dir))
    face = np.random.default_rng(0).integers(0, 255, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    audio = speech[8000:20000].astype(np.float32) / 32768.0
    items = [MuseTalkItem(audio, offset, face, ("face",)) for offset in (4000, 8000)]
    together = runner(items)
    alone = [runner([it])[0] for it in items]
    assert together[0].shape == (FACE_SIZE, FACE_SIZE, 3) and together[0].dtype == np.uint8
    for a, b in zip(together, alone, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    assert not np.array_equal(together[0], together[1])  # different audio, different mouth


async def test_sessions_speak_the_protocol_through_musetalk(model_dir: Path, tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0, engine="musetalk", model=model_dir, device="cpu", max_sessions=2)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (app, url):
        pcm = speech[8000:16000]
        frames = [f async for f in stream_audio(url, pcm, SessionParams(realtime=False))]
        assert [f.index for f in frames] == list(range(frames_for_samples(len(pcm))))
        assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes()
        character = load_default_character()
        k = 8
        ref = character.frames[character.ref_index(k)].astype(int)
        lm = character.landmarks[character.ref_index(k)]
        y, x = int(lm[14, 1]), int(lm[14, 0])
        image = decode_image(frames[k]).astype(int)
        assert np.abs(image[y - 5 : y + 5, x - 20 : x + 20] - ref[y - 5 : y + 5, x - 20 : x + 20]).mean() > 5  # the model drew the mouth
        assert np.abs(image[:120] - ref[:120]).mean() < 2  # the rest is the character
        assert app.engine.service.stats.items >= len(frames) // 2


def test_face_latents_are_kept_on_disk_and_used_by_the_next_process(model_dir: Path, tmp_path: Path, speech: np.ndarray) -> None:
    face = np.random.default_rng(1).integers(0, 255, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    item = MuseTalkItem(speech[8000:20000].astype(np.float32) / 32768.0, 4000, face, ("a face",))
    first = MuseTalkRunner(MuseTalkFiles.find(model_dir), cache_dir=tmp_path)
    out = first([item])[0]
    assert len(list(tmp_path.glob("musetalk-latents/*/*.npy"))) == 1
    second = MuseTalkRunner(MuseTalkFiles.find(model_dir), cache_dir=tmp_path)

    def no_encoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the VAE encoded a face whose latents were on disk")

    second.vae.encode = no_encoding
    assert np.abs(second([item])[0].astype(int) - out.astype(int)).max() <= 1
    # a damaged file is encoded again, not trusted
    next(tmp_path.glob("musetalk-latents/*/*.npy")).write_bytes(b"not an array")
    third = MuseTalkRunner(MuseTalkFiles.find(model_dir), cache_dir=tmp_path)
    assert np.abs(third([item])[0].astype(int) - out.astype(int)).max() <= 1


def test_whisper_input_of_a_short_clip_equals_the_extractors_30_s_window(model_dir: Path, speech: np.ndarray) -> None:
    runner = MuseTalkRunner(MuseTalkFiles.find(model_dir))
    clips = [speech[8000:18400].astype(np.float32) / 32768.0, np.zeros(9000, np.float32), speech[20000:29999].astype(np.float32) / 32768.0]
    ours = runner.input_features(clips)
    theirs = runner.features(clips, sampling_rate=16000, return_tensors="np").input_features
    assert ours.shape == theirs.shape == (3, 80, 3000)
    assert np.abs(ours - theirs).max() < 1e-4


def test_the_face_crop_is_centred_on_the_nose_as_musetalks_preprocessing_centres_it() -> None:
    """As far above the lower nose bridge (68-point 29) as the jaw's lowest point is below it,
    10 px past that below, the face's width across; the paste uses the same box."""
    from lipsync_stream.characters.landmarks import JAW
    from lipsync_stream.neural.engine import MuseTalkEngine
    from lipsync_stream.neural.musetalk import NASION, PRONASALE, landmark_box

    ref = load_default_character().reference(0)
    lm = ref.landmarks
    assert lm is not None
    y1, y2, x1, x2 = landmark_box(lm)
    nose_y = lm[NASION, 1] + 2 / 3 * (lm[PRONASALE, 1] - lm[NASION, 1])
    assert abs((nose_y - y1) - (y2 - 10 - nose_y)) <= 2
    assert abs(y2 - 10 - lm[JAW, 1].max()) <= 1
    assert x1 <= lm[JAW, 0].min() and x2 >= lm[JAW, 0].max()
    assert MuseTalkEngine.box(ref) == (y1, y2, x1, x2)
    # landmarks that make no box (all in one place): the character's own box
    flat = np.full_like(lm, 200.0)
    assert landmark_box(flat) is None


def streamed_items(engine: Any, pcm: np.ndarray, ref: Any) -> dict[int, MuseTalkItem | None]:
    """What a session's MuseTalk stream asks the model for, frame by frame, for *pcm* sent at once."""
    from lipsync_stream.neural.engine import MuseTalkStream
    from lipsync_stream.wire.protocol import AudioFramer

    framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
    framer.push(pcm.tobytes())
    framer.flush()
    stream = MuseTalkStream(engine)
    items = {}
    while framer.ready():
        frame = framer.pop()
        items[frame.index] = stream.mouth(frame, ref).model_input
    return items


def test_a_streamed_frame_is_encoded_where_the_whole_utterance_puts_it(model_dir: Path, speech: np.ndarray) -> None:
    """Streamed frames see whisper's window as MuseTalk's reference does for the whole utterance:
    the same positions, zero vectors before the start; where the stream has all the utterance
    in a frame's window, its tokens are the whole utterance's."""
    from lipsync_stream.neural.engine import MuseTalkEngine, MuseTalkStream
    from lipsync_stream.wire.protocol import frame_start

    engine = MuseTalkEngine(model_dir, device="cpu")
    try:
        runner = MuseTalkRunner(MuseTalkFiles.find(model_dir))  # the same weights as the engine's
        ref = load_default_character().reference(0)
        pcm = speech[: 3 * 16000]  # shorter than the 4 s of context: every frame sees it from its start
        items = {k: item for k, item in streamed_items(engine, pcm, ref).items() if item is not None}  # quiet frames: none
        whole = pcm.astype(np.float32) / 32768.0
        last = max(k for k in items if frame_start(k) + engine.lookahead_samples + 600 >= len(pcm))  # its window reaches the end
        early = min(items)
        key, face = engine.face(ref)
        offline = runner.audio_tokens([MuseTalkItem(whole, frame_start(k), face, key) for k in (early, last)])
        streamed = runner.audio_tokens([items[early], items[last]])
        spread = float(offline.std())
        assert float((streamed[1] - offline[1]).pow(2).mean().sqrt()) < 1e-3 * spread  # all of it seen: the same tokens
        assert items[early].at == 0 and items[early].offset == frame_start(early)  # at its place in the window
        near = float((streamed[0] - offline[0]).pow(2).mean().sqrt()) / spread  # the future unseen: close, not equal
        assert 0 < near < 1.0
    finally:
        engine.close()

    # --fidelity reference: every frame sees its whole segment, so every frame's tokens are the
    # whole utterance's, and quiet frames go through the model too
    reference = MuseTalkEngine(model_dir, device="cpu", fidelity="reference")
    try:
        got = streamed_items(reference, pcm, ref)
        assert all(item is not None for item in got.values()) and not MuseTalkStream(reference).silent()
        picked = [0, early, len(got) // 2]
        offline = runner.audio_tokens([MuseTalkItem(whole, frame_start(k), face, key) for k in picked])
        streamed = runner.audio_tokens([item for k in picked if (item := got[k]) is not None])
        assert float((streamed - offline).pow(2).mean().sqrt()) < 1e-3 * spread
    finally:
        reference.close()
