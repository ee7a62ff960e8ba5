"""Learned engine speed: the Wav2Lip model alone, and real-time sessions through a server.

1. The model alone, per batch size: ms per frame and frames/s, with PyTorch and with ONNX Runtime
   (fp32), and ONNX Runtime with int8 dynamic quantization, with the PSNR of its output against
   fp32 (on the same random inputs).
2. N real-time sessions through ``lipsync-stream serve --engine wav2lip`` in a subprocess, each
   sending speech at real time in 250 ms chunks: frame latency (audio chunk sent -> its frames
   received) p50/p99, and the share of frames that kept the last generated mouth because the
   model could not keep up (``lipsync_held_frames_total``).

Speed does not depend on the weights, so a random-weight checkpoint in the public layout is made
when none is given.

    .venv/bin/python bench/neural.py [--engine wav2lip|musetalk] [--model CKPT|DIR] [--device cpu|cuda] [--batches 1 8 32] [--sessions 1 2]

``--engine musetalk`` builds a random-weight model folder of the published sizes (3.4 GB of UNet)
when no --model is given; ``--sessions 0`` skips the server part (slow on a CPU).

A GPU run: ``--device cuda --batches 1 8 32 64 128 --sessions 16 64`` (needs a CUDA build of torch
and onnxruntime-gpu).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serverproc import ServerProcess  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.cli import sample_speech  # noqa: E402


def random_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(-4, 4, (n, 1, 80, 16)).astype(np.float32), rng.uniform(0, 1, (n, 6, 96, 96)).astype(np.float32)


def timed(run, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    run()  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def model_table(ckpt: Path, device: str, batches: list[int], tmp: Path) -> None:
    import os

    import onnxruntime as ort
    import torch

    from lipsync_stream.neural.checkpoint import load_checkpoint
    from lipsync_stream.neural.wav2lip import Wav2Lip

    torch.set_num_threads(os.cpu_count() or 1)  # as the engine does
    model = load_checkpoint(Wav2Lip(), ckpt).to(device).to(memory_format=torch.channels_last)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = model.to(dtype)
    onnx_path, int8_path = tmp / "w2l.onnx", tmp / "w2l.int8.onnx"
    axes = {"mel": {0: "b"}, "face": {0: "b"}, "out": {0: "b"}}
    cpu_model = load_checkpoint(Wav2Lip(), ckpt)
    torch.onnx.export(cpu_model, (torch.rand(2, 1, 80, 16), torch.rand(2, 6, 96, 96)), str(onnx_path), dynamo=False, input_names=["mel", "face"], output_names=["out"], dynamic_axes=axes, opset_version=17)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    fp32 = ort.InferenceSession(str(onnx_path), providers=providers)
    int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    print(f"Wav2Lip 96x96, device {device} ({'fp16' if dtype == torch.float16 else 'fp32'} in torch, channels-last); torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print("(random weights: the int8 PSNR only shows that quantization runs; measure it on a trained checkpoint with --model)")
    print()
    print("| batch | torch ms/frame | torch frames/s | ORT fp32 ms/frame | ORT fp32 frames/s | ORT int8 ms/frame | ORT int8 frames/s | int8 PSNR vs fp32 (dB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in batches:
        mel, face = random_inputs(b)
        tm, tf = torch.from_numpy(mel).to(device, dtype), torch.from_numpy(face).to(device, dtype).contiguous(memory_format=torch.channels_last)

        def run_torch() -> None:
            with torch.inference_mode():
                model(tm, tf)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        t_torch = timed(run_torch)
        t_fp32 = timed(lambda: fp32.run(None, {"mel": mel, "face": face}))
        t_int8 = timed(lambda: int8.run(None, {"mel": mel, "face": face}))
        quality = psnr(int8.run(None, {"mel": mel, "face": face})[0], fp32.run(None, {"mel": mel, "face": face})[0])
        row = [b, 1000 * t_torch / b, b / t_torch, 1000 * t_fp32 / b, b / t_fp32, 1000 * t_int8 / b, b / t_int8]
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row) + f" | {quality:.1f} |")


async def realtime_session(url: str, pcm: bytes, latencies: list[float]) -> int:
    from websockets.asyncio.client import connect

    from lipsync_stream.wire.protocol import decode_frame, frame_start

    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({}))
        sent_at: list[tuple[int, float]] = []

        async def send() -> None:
            start = time.perf_counter()
            for i, pos in enumerate(range(0, len(pcm), 8000)):
                await asyncio.sleep(max(0.0, start + i * 0.25 - time.perf_counter()))
                await ws.send(pcm[pos : pos + 8000])
                sent_at.append(((pos + 8000) // 2, time.perf_counter()))
            await ws.send("DONE")

        sender = asyncio.create_task(send())
        frames = 0
        async for message in ws:
            if message == "DONE":
                break
            k = decode_frame(message).index
            end = frame_start(k + 1)
            arrived = next((t for s, t in sent_at if s >= end), None)  # when the frame's audio was all sent
            if arrived is not None:
                latencies.append(time.perf_counter() - arrived)
            frames += 1
        await sender
        return frames


def musetalk_table(model_dir: Path, device: str, batches: list[int]) -> None:
    """MuseTalk's model function alone: whisper, UNet and VAE decode per batch of frames (each
    frame's reference latents already kept, as they are after a character's first frames)."""
    import os

    import torch

    from lipsync_stream.neural.musetalk import FACE_SIZE, MuseTalkFiles, MuseTalkItem, MuseTalkRunner

    torch.set_num_threads(os.cpu_count() or 1)
    runner = MuseTalkRunner(MuseTalkFiles.find(model_dir), device)
    audio = load_audio(sample_speech())[:32000].astype(np.float32) / 32768.0
    face = np.random.default_rng(0).integers(0, 255, (FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    params = sum(p.numel() for m in (runner.unet, runner.vae, runner.encoder) for p in m.parameters())
    print(f"MuseTalk 1.5 (published sizes, random weights: {params / 1e6:.0f} M parameters), device {device} ({runner.dtype}); torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print()
    print("| batch | ms/frame | frames/s | of which whisper | UNet + VAE decode |")
    print("|---:|---:|---:|---:|---:|")
    for b in batches:
        items = [MuseTalkItem(audio, 8000 + 533 * k, face, ("bench",)) for k in range(b)]
        runner(items[:1])  # latents kept, warm
        t_all = timed(lambda items=items: runner(items), repeats=2)
        t_audio = timed(lambda items=items: runner.audio_tokens(items), repeats=2)
        print(f"| {b} | {1000 * t_all / b:.0f} | {b / t_all:.2f} | {1000 * t_audio / b:.0f} | {1000 * (t_all - t_audio) / b:.0f} |")


def sessions_table(ckpt: Path, device: str, counts: list[int], tmp: Path, engine: str = "wav2lip") -> None:
    import httpx

    speech = load_audio(sample_speech())
    pcm = np.tile(speech, 2).tobytes()  # 17.7 s each
    print()
    print(f"| real-time sessions | frames | p50 latency (ms) | p99 latency (ms) | frames that kept the last mouth | device {device} |")
    print("|---:|---:|---:|---:|---:|---|")
    for n in counts:
        server = ServerProcess(["--engine", engine, "--model", str(ckpt), "--device", device, "--max-sessions", str(max(counts)), "--cache-dir", str(tmp / "cache")])
        try:
            latencies: list[float] = []

            async def run(n: int = n, latencies: list[float] = latencies) -> int:
                return sum(await asyncio.gather(*(realtime_session(server.url, pcm, latencies) for _ in range(n))))

            frames = asyncio.run(run())
            metrics = httpx.get(server.url.replace("ws://", "http://").rsplit("/", 1)[0] + "/metrics").text
            held = float(re.search(r"^lipsync_held_frames_total (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
            lat = np.array(latencies) * 1000
            print(f"| {n} | {frames} | {np.percentile(lat, 50):.0f} | {np.percentile(lat, 99):.0f} | {held:.0f} ({100 * held / frames:.0f} %) | |")
        finally:
            server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["wav2lip", "musetalk"], default="wav2lip")
    parser.add_argument("--model", type=Path, default=None, help="a Wav2Lip checkpoint or a MuseTalk model directory (default: random weights in the public layout and sizes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = args.model
        if args.engine == "musetalk":
            if ckpt is None:
                sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
                from musetalk_models import make_model_dir

                ckpt = make_model_dir(tmp / "musetalk", published_sizes=True)
            musetalk_table(ckpt, args.device, args.batches)
            if args.sessions != [0]:
                sessions_table(ckpt, args.device, args.sessions, tmp, "musetalk")
            return
        if ckpt is None:
            import torch

            from lipsync_stream.neural.wav2lip import Wav2Lip

            torch.manual_seed(0)
            ckpt = tmp / "random.pth"
            torch.save(Wav2Lip().state_dict(), ckpt)
        model_table(ckpt, args.device, args.batches, tmp)
        sessions_table(ckpt, args.device, args.sessions, tmp)


if __name__ == "__main__":
    main()
