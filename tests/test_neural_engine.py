"""The Wav2Lip engine through the server: random weights in the exact public layout, end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from websockets.asyncio.client import connect  # noqa: E402

from lipsync_stream.characters.character import load_default_character  # noqa: E402
from lipsync_stream.characters.fetch import FetchConfig  # noqa: E402
from lipsync_stream.cli import main  # noqa: E402
from lipsync_stream.client import ServerError, decode_image, stream_audio  # noqa: E402
from lipsync_stream.neural.wav2lip import Wav2Lip  # noqa: E402
from lipsync_stream.pipeline import FrameRenderer  # noqa: E402
from lipsync_stream.serve.runner import running_server  # noqa: E402
from lipsync_stream.serve.server import LipsyncServer  # noqa: E402
from lipsync_stream.serve.server_config import ServerConfig  # noqa: E402
from lipsync_stream.wire.protocol import AudioFramer, SessionParams, frames_for_samples  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w2l") / "wav2lip_random.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in Wav2Lip().state_dict().items()}, "optimizer": {}}, path)
    return path


@pytest.fixture
async def w2l(checkpoint: Path, tmp_path: Path) -> AsyncIterator[tuple[LipsyncServer, str]]:
    config = ServerConfig(port=0, engine="wav2lip", model=checkpoint, device="cpu", max_sessions=8)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as pair:
        yield pair


async def test_sessions_speak_the_protocol_byte_for_byte(w2l: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    app, url = w2l
    pcm = speech[8000:24000]
    frames = [f async for f in stream_audio(url, pcm, SessionParams(realtime=False))]
    assert [f.index for f in frames] == list(range(frames_for_samples(len(pcm))))
    assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes()
    reference = load_default_character()
    lm = reference.landmarks[reference.ref_index(10)]
    image = decode_image(frames[10]).astype(int)
    ref = reference.frames[reference.ref_index(10)].astype(int)
    mouth_y, mouth_x = int(lm[14, 1]), int(lm[14, 0])
    assert np.abs(image[mouth_y - 5 : mouth_y + 5, mouth_x - 20 : mouth_x + 20] - ref[mouth_y - 5 : mouth_y + 5, mouth_x - 20 : mouth_x + 20]).mean() > 5  # the model drew the mouth
    assert np.abs(image[:150] - ref[:150]).mean() < 2  # the rest is the character
    stats = app.engine.service.stats
    assert stats.items >= len(frames) // 2  # frames of digital silence need no model
    assert max(stats.batch_sizes) > 1  # one session's frames in flight together go through in one batch


async def test_eight_sessions_share_the_model_in_batches_each_in_order(w2l: tuple[LipsyncServer, str], speech: np.ndarray) -> None:
    app, url = w2l

    async def one(i: int) -> None:
        pcm = speech[8000 + 1000 * i :][:8000]
        frames = [f async for f in stream_audio(url, pcm, SessionParams(realtime=False))]
        assert [f.index for f in frames] == list(range(frames_for_samples(len(pcm))))
        assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes()

    await asyncio.gather(*(one(i) for i in range(8)))
    stats = app.engine.service.stats
    assert max(stats.batch_sizes) > 1  # frames of different sessions went through the model together
    assert app.engine.service.sessions == 0  # every session gave its place back


async def test_skip_and_capacity(checkpoint: Path, tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0, engine="wav2lip", model=checkpoint, device="cpu", max_sessions=1)
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (_app, url):
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({}))
            await ws.send(speech[8000:].tobytes())
            first = await asyncio.wait_for(ws.recv(), 20)
            assert isinstance(first, bytes)
            with pytest.raises(ServerError) as info:  # the one place is taken
                [f async for f in stream_audio(url, speech[:1600], SessionParams(realtime=False))]
            assert info.value.kind == "capacity" and info.value.code == 1013
            await ws.send("SKIP")
            await ws.send("DONE")
            rest = []
            async for message in ws:
                rest.append(message)
            assert rest[-1] == "DONE" and len(rest) < 60  # what was in flight, not the 7 s of speech


async def test_late_frames_keep_the_last_mouth_instead_of_waiting(checkpoint: Path, speech: np.ndarray) -> None:
    from lipsync_stream.engines import get_engine

    engine = get_engine("wav2lip", checkpoint, "cpu")
    try:
        renderer = FrameRenderer(engine, load_default_character(), SessionParams())
        framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
        framer.push(speech[8000:24000].tobytes())
        with ThreadPoolExecutor(1) as pool:
            first = await renderer.render_learned(framer.pop(), pool)
            items = engine.service.stats.items
            held = await renderer.render_learned(framer.pop(), pool, late=True)
        assert engine.service.stats.items == items and renderer.held_frames == 1  # no model call for it
        assert first[:5] == held[:5] == b"VIDEO"
        renderer.close()
        assert engine.service.sessions == 0
    finally:
        engine.close()


def test_render_and_demo_take_the_engine_and_a_model(checkpoint: Path, tmp_path: Path, speech: np.ndarray) -> None:
    from lipsync_stream.audio import save_wav

    save_wav(tmp_path / "in.wav", speech[8000:24000])
    out = tmp_path / "out.mp4"
    assert main(["render", str(tmp_path / "in.wav"), "-o", str(out), "--engine", "wav2lip", "--model", str(checkpoint), "--device", "cpu", "--cache-dir", str(tmp_path / "c")]) == 0
    assert out.stat().st_size > 10_000
    assert main(["render", str(tmp_path / "in.wav"), "-o", str(out), "--engine", "wav2lip", "--cache-dir", str(tmp_path / "c")]) == 2  # no model
    assert main(["render", str(tmp_path / "in.wav"), "-o", str(out), "--engine", "viseme", "--model", str(checkpoint), "--cache-dir", str(tmp_path / "c")]) == 2


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    pytest.importorskip("onnx")
    from lipsync_stream.neural.checkpoint import load_checkpoint

    model = load_checkpoint(Wav2Lip(), checkpoint)
    path = tmp_path_factory.mktemp("onnx") / "wav2lip.onnx"
    axes = {"mel": {0: "batch"}, "face": {0: "batch"}, "out": {0: "batch"}}
    torch.onnx.export(model, (torch.rand(2, 1, 80, 16), torch.rand(2, 6, 96, 96)), str(path), dynamo=False, input_names=["mel", "face"], output_names=["out"], dynamic_axes=axes, opset_version=17)
    return path


def test_an_onnx_export_runs_in_onnx_runtime_like_the_checkpoint(onnx_model: Path, checkpoint: Path) -> None:
    from lipsync_stream.engines import get_engine

    rng = np.random.default_rng(0)
    items = [(rng.uniform(-4, 4, (80, 16)).astype(np.float32), rng.uniform(0, 1, (6, 96, 96)).astype(np.float32)) for _ in range(3)]
    outputs = []
    for model in (onnx_model, checkpoint):
        engine = get_engine("wav2lip", model, "cpu")
        try:
            session = engine.service.open()
            outputs.append([f.result(timeout=60) for f in [engine.service.submit(session, item) for item in items]])
        finally:
            engine.close()
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(*outputs, strict=True)) <= 1


def test_files_that_are_not_a_wav2lip_onnx_export_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from lipsync_stream.engines import get_engine
    from lipsync_stream.neural import CheckpointError

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + bytes(range(256)) * 10)
    with pytest.raises(CheckpointError, match="junk.onnx is not an ONNX model ONNX Runtime can run"):
        get_engine("wav2lip", junk, "cpu")
    other = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2), (torch.rand(1, 4),), str(other), dynamo=False, opset_version=17)
    with pytest.raises(CheckpointError, match="linear.onnx is not a Wav2Lip export"):
        get_engine("wav2lip", other, "cpu")


async def test_a_server_serves_an_onnx_model(onnx_model: Path, tmp_path: Path, speech: np.ndarray) -> None:
    config = ServerConfig(port=0, engine="wav2lip", model=onnx_model, device="cpu")
    config.fetch = FetchConfig(cache_dir=tmp_path / "cache")
    async with running_server(config) as (_app, url):
        pcm = speech[8000:16000]
        frames = [f async for f in stream_audio(url, pcm, SessionParams(realtime=False))]
    assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes() and len(frames) == frames_for_samples(len(pcm))


async def test_skip_drops_the_sessions_queued_model_requests(checkpoint: Path, speech: np.ndarray) -> None:
    import threading

    from lipsync_stream.engines import get_engine

    engine = get_engine("wav2lip", checkpoint, "cpu")
    try:
        renderer = FrameRenderer(engine, load_default_character(), SessionParams(realtime=False))
        framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
        framer.push(speech[8000:40000].tobytes())
        with ThreadPoolExecutor(2) as pool:
            await renderer.render_learned(framer.pop(), pool)  # a generated mouth to fall back on
            service, run, gate = engine.service, engine.service._run, threading.Event()
            service.max_batch = 1
            service._run = lambda items: (gate.wait(30), run(items))[1]  # the model is busy...
            other = service.open()
            blocker = service.submit(other, renderer.stream.mouth(framer.pop(), renderer.character.reference(1)).model_input)
            while service.queued():
                await asyncio.sleep(0.001)  # ...with another session's frame
            tasks = [asyncio.ensure_future(renderer.render_learned(framer.pop(), pool)) for _ in range(6)]
            while service.queued() < 6:
                await asyncio.sleep(0.001)
            dropped = renderer.skip()
            gate.set()
            messages = await asyncio.gather(*tasks)
            blocker.result(timeout=30)
        assert dropped == 6 and renderer.held_frames == 6  # every queued request dropped; its frame still went out
        assert all(m[:5] == b"VIDEO" for m in messages)
        assert service.stats.cancelled == 6
        renderer.close()
    finally:
        engine.close()


async def test_near_silence_keeps_the_lips_closed_without_a_model_call(checkpoint: Path, speech: np.ndarray) -> None:
    """Room noise and breath (far under the speech) show the reference's closed lips, not whatever
    the model draws for them; speech around them still goes through the model."""
    from lipsync_stream.engines import get_engine

    engine = get_engine("wav2lip", checkpoint, "cpu")
    try:
        character = load_default_character()
        renderer = FrameRenderer(engine, character, SessionParams(realtime=False))
        noise = (np.random.default_rng(0).standard_normal(16000) * 20).astype(np.int16)  # about -64 dBFS
        pcm = np.concatenate([speech[8000:24000], noise, np.zeros(4000, np.int16)])
        framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
        framer.push(pcm.tobytes())
        framer.flush()
        with ThreadPoolExecutor(2) as pool:
            frames = []
            while framer.ready():
                frames.append(await renderer.render_learned(framer.pop(), pool))
        speech_frames = frames_for_samples(16000)
        assert engine.service.stats.items <= speech_frames + 3  # noise frames needed no model
        assert engine.service.stats.items >= speech_frames // 2
        from lipsync_stream.wire.protocol import decode_frame

        for k in range(speech_frames + 8, len(frames)):  # well into the noise: the reference itself
            expected = character.jpegs.get(character.ref_index(k), character.reference(k).image, renderer.jpeg_quality).data
            assert decode_frame(frames[k]).image == expected
    finally:
        engine.close()


def wav2lip_inference(network: Wav2Lip, image: np.ndarray, box: tuple[int, int, int, int], wav: np.ndarray, fps: int = 30) -> list[np.ndarray]:
    """What Wav2Lip's inference.py computes for a still image and a detected face box, from its
    published formulas: the box padded (0, 10, 0, 0), the mel of the whole utterance cut into
    16-column chunks from int(i * 80 / fps) (the last chunk the last 16 columns), the crop scaled
    to 96 bilinearly with its lower half blacked out beside it, the output times 255 truncated to
    8 bits, scaled back bilinearly and written over the whole box."""
    import cv2

    from lipsync_stream.engines.melspec import melspectrogram

    y1, y2, x1, x2 = box
    y2 = min(image.shape[0], y2 + 10)
    mel = melspectrogram(wav.astype(np.float32) / 32768.0)
    chunks, i = [], 0
    while True:
        start = int(i * 80.0 / fps)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - 16 :])
            break
        chunks.append(mel[:, start : start + 16])
        i += 1
    face = cv2.resize(image[y1:y2, x1:x2], (96, 96))
    masked = face.copy()
    masked[48:] = 0
    faces = torch.from_numpy(np.concatenate([masked, face], axis=2)[None].transpose(0, 3, 1, 2) / 255.0).float()
    frames = []
    with torch.no_grad():
        for chunk in chunks:
            pred = network(torch.from_numpy(chunk[None, None]).float(), faces).numpy().transpose(0, 2, 3, 1)[0] * 255.0
            frame = image.copy()
            frame[y1:y2, x1:x2] = cv2.resize(pred.astype(np.uint8), (x2 - x1, y2 - y1))
            frames.append(frame)
    return frames


def test_reference_fidelity_computes_what_wav2lip_inference_computes(checkpoint: Path, speech: np.ndarray) -> None:
    """``--fidelity reference``: streamed frame by frame through the engine and the shared model
    service, every frame within one level of Wav2Lip's own inference on the same still, box,
    speech and weights (silence and the utterance's end included); the tuned default is not."""
    from lipsync_stream.characters.character import make_character
    from lipsync_stream.engines.base import apply_region
    from lipsync_stream.neural.checkpoint import load_checkpoint
    from lipsync_stream.neural.engine import Wav2LipEngine

    default = load_default_character()
    still = make_character("still", default.frames[:1].copy(), default.landmarks[:1].copy(), default.boxes[:1].copy())
    image, box = still.frames[0], tuple(int(v) for v in still.boxes[0])
    wav = np.concatenate([np.zeros(3000, np.int16), speech[8000:30000]])
    network = Wav2Lip()
    load_checkpoint(network, checkpoint)
    expected = wav2lip_inference(network.eval(), image, box, wav)  # type: ignore[arg-type]
    for fidelity in ("reference", "tuned"):
        engine = Wav2LipEngine(checkpoint, "cpu", fidelity=fidelity)
        try:
            stream, handle = engine.stream(), engine.service.open()
            framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
            framer.push(wav.tobytes())
            framer.flush()
            ours = []
            while framer.ready():
                frame = framer.pop()
                ref = still.reference(frame.index)
                if not frame.window.any() and stream.silent():
                    ours.append(ref.image)
                    continue
                mouth = stream.mouth(frame, ref)
                generated = engine.service.submit(handle, mouth.model_input).result() if mouth.strength > 0 else None
                region = stream.draw(ref, mouth, generated)
                ours.append(ref.image if region is None else apply_region(ref.image, region))
        finally:
            engine.close()
        # The reference's video stops at its last full mel chunk; the stream sends a frame for every
        # 1/30 s of audio (the protocol's contract): those last few show the last chunk's mouth too.
        assert len(ours) == frames_for_samples(len(wav)) and 0 <= len(ours) - len(expected) <= 6
        worst = max(int(np.abs(a.astype(int) - expected[min(k, len(expected) - 1)].astype(int)).max()) for k, a in enumerate(ours))
        if fidelity == "reference":
            assert worst <= 1
        else:
            assert worst > 20  # the tuned paste, crop and gate differ where it matters: the face box
