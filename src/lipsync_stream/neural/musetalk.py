"""MuseTalk 1.5: a learned mouth whose code (MIT) and weights may be used in products.

MuseTalk inpaints the lower half of a 256x256 face in the latent space of Stable Diffusion's VAE
(``sd-vae-ft-mse``), in one UNet step at timestep 0, conditioned through cross-attention on
whisper-tiny's encoder features of the audio around the frame. Per frame:

- the face crop (256x256, RGB scaled to -1..1) is encoded twice: with its lower half blacked out
  and whole; the two latents (4x32x32 each) are the UNet's 8 input channels. They depend only on
  the reference frame, so they are computed once per reference frame and kept, in memory and in
  the cache directory (named by the VAE's weights and the face's pixels);
- the audio: whisper-tiny's feature extractor (80 log-mel bands, 30 s windows) and its encoder,
  every hidden state (the embedding and each layer: 5 x 384 at 50 per second); for the frame
  starting at time t, the 10 encoder frames from ``floor(50 t) - 4`` on (zero vectors before the
  utterance), flattened to 50 tokens of 384, plus a sinusoidal position encoding, are the
  cross-attention context. The reference encodes the whole utterance, 30 s a window; a stream
  cannot wait for it, so a frame is encoded from the 4 s before it and the lookahead after it,
  placed where they lie in the utterance's 30 s segment (``MuseTalkItem.at``);
- the UNet's 4x32x32 output is decoded by the VAE into the generated 256x256 face.

This module loads the files as MuseTalk publishes them (:class:`MuseTalkFiles`) and runs batches
(:class:`MuseTalkRunner`, the model function of the shared inference service). diffusers and
transformers come from the ``[musetalk]`` extra; every weight file is read without running code
(``weights_only`` or safetensors).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import CheckpointError, NeuralUnavailable
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)

FACE_SIZE = 256
WHISPER_RATE = 50  # encoder frames per second
CLIP_FRAMES = 10  # encoder frames per video frame: 2 x (2 left + 1 + 2 right) at MuseTalk's 25 fps
CLIP_LEFT = 4  # of which before the frame's start
WHISPER_DIM = 384
#: unet.pth of MuseTalk 1.5 is 3.4 GB in float32
MAX_UNET_BYTES = 8 * 1024**3
LATENT_CACHE = 1024  # reference frames whose latents are kept (32 kB each)
PAD_TAIL = 800  # samples of silence after a clip before its spectrogram (two STFT windows)
#: MuseTalk's reference encodes an utterance in 30 s segments: whisper's whole window each
SEGMENT_SAMPLES = 30 * 16000
MEL_HOP = 160  # samples per log-mel column (100 a second); encoder frames are two columns
#: audio before a frame that a streamed frame is encoded with (bench/musetalk_context.py: past
#: 2 s more changes nothing measurable; whisper's window is 30 s whatever the context, so this
#: costs no model time)
PAST_SAMPLES = 4 * 16000
EXTRA_MARGIN = 10  # px under the chin: MuseTalk 1.5's inference adds this to the landmark box
NASION, PRONASALE = 168, 4  # face-mesh points at the top and the tip of the nose
FACE_SIDES = (234, 454)  # face-mesh points at the face's sides, level with the eyes (68-point 0 and 16)


def landmark_box(landmarks: np.ndarray, size: tuple[int, int] = (512, 512)) -> tuple[int, int, int, int] | None:
    """(y1, y2, x1, x2) of MuseTalk's face crop, centred as its preprocessing centres it on
    68-point landmarks, here from the face mesh: across, the face's extent (68-point 0 to 16,
    and the jaw); down, from as far above the lower nose bridge (68-point 29, two thirds of the
    way from the nose's top to its tip) as the lowest jaw point is below it, to that point plus
    EXTRA_MARGIN. None where the landmarks make no box (the caller keeps its own)."""
    from ..characters.landmarks import JAW

    nose = landmarks[NASION] + (2.0 / 3.0) * (landmarks[PRONASALE] - landmarks[NASION])
    bottom = float(landmarks[JAW, 1].max())
    xs = landmarks[[*FACE_SIDES, *JAW], 0]
    y1 = int(max(0.0, nose[1] - (bottom - nose[1])))
    y2 = int(min(size[0], bottom + EXTRA_MARGIN))
    x1, x2 = int(max(0.0, xs.min())), int(min(size[1], xs.max()))
    if y2 - y1 < 8 or x2 - x1 < 8:
        return None
    return y1, y2, x1, x2

#: the published layout, relative to --model DIR
LAYOUT = {
    "unet config": "musetalkV15/musetalk.json",
    "unet weights": "musetalkV15/unet.pth",
    "vae config": "sd-vae/config.json",
    "whisper config": "whisper/config.json",
    "whisper preprocessor": "whisper/preprocessor_config.json",
}
VAE_WEIGHTS = ("sd-vae/diffusion_pytorch_model.safetensors", "sd-vae/diffusion_pytorch_model.bin")
WHISPER_WEIGHTS = ("whisper/model.safetensors", "whisper/pytorch_model.bin")


def require_musetalk() -> None:
    """Raise a clear error when diffusers or transformers (the ``[musetalk]`` extra) is missing."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise NeuralUnavailable("the musetalk engine needs diffusers and transformers: pip install 'lipsync-stream[neural,musetalk]'") from None


@dataclass(frozen=True)
class MuseTalkFiles:
    """The files of a MuseTalk model directory, each checked to be there."""

    root: Path
    unet_config: Path
    unet_weights: Path
    vae_dir: Path
    whisper_dir: Path

    @classmethod
    def find(cls, root: Path) -> MuseTalkFiles:
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"--model for musetalk is a directory laid out as MuseTalk publishes it (musetalkV15/, sd-vae/, whisper/); {root} is not one")
        for what, rel in LAYOUT.items():
            if not (root / rel).is_file():
                raise CheckpointError(f"{root}: the {what} {rel} is missing (MuseTalk's layout: musetalkV15/musetalk.json and unet.pth, sd-vae/, whisper/)")
        for what, names in (("VAE weights", VAE_WEIGHTS), ("whisper weights", WHISPER_WEIGHTS)):
            if not any((root / n).is_file() for n in names):
                raise CheckpointError(f"{root}: the {what} are missing ({' or '.join(names)})")
        return cls(root, root / LAYOUT["unet config"], root / LAYOUT["unet weights"], root / "sd-vae", root / "whisper")


def first_encoder_frame(sample: int) -> int:
    """The first of the 10 encoder frames of the video frame that starts at *sample* of the
    window (negative ones, before the utterance, are zero vectors)."""
    return math.floor(sample / 16000 * WHISPER_RATE) - CLIP_LEFT


def position_encoding(length: int = CLIP_FRAMES * 5, dim: int = WHISPER_DIM) -> torch.Tensor:
    """(length, dim) sinusoidal position encoding (sin on even, cos on odd features), as MuseTalk adds to its audio tokens."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


@dataclass(frozen=True)
class MuseTalkItem:
    """One frame's request: its audio and its reference face.

    ``audio``: float32 samples (16 kHz) from some time before the frame to after it;
    ``offset``: where the frame starts in ``audio``, in samples; ``face``: the 256x256 BGR crop
    of the reference frame; ``face_key``: names that crop, so that its latents are kept;
    ``at``: where ``audio[0]`` lies in whisper's 30 s window (samples, a multiple of two mel
    columns): where it lies in its utterance's 30 s segment, so that whisper sees the frame at
    the position (and with the encoder frames' phase) it has when the whole utterance is encoded.
    """

    audio: np.ndarray
    offset: int
    face: np.ndarray
    face_key: tuple[Any, ...]
    at: int = 0


class MuseTalkRunner:
    """The model function for the inference service: batches of items -> 256x256 BGR faces."""

    def __init__(self, files: MuseTalkFiles, device: str = "cpu", cache_dir: Path | None = None) -> None:
        require_musetalk()
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import WhisperFeatureExtractor, WhisperModel

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            config = json.loads(files.unet_config.read_text())
            unet: Any = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{files.unet_config.name} is not a UNet2DConditionModel configuration: {exc}") from None
        if unet.config.in_channels != 8 or unet.config.out_channels != 4:
            raise CheckpointError(f"{files.unet_config.name}: a MuseTalk UNet takes 8 channels and gives 4, this one {unet.config.in_channels} and {unet.config.out_channels}")
        cross_dim = int(unet.config.cross_attention_dim)
        self.unet: Any = load_checkpoint(unet, files.unet_weights, MAX_UNET_BYTES)
        try:
            self.vae: Any = AutoencoderKL.from_pretrained(str(files.vae_dir)).eval()
            whisper = WhisperModel.from_pretrained(str(files.whisper_dir))
            self.features = WhisperFeatureExtractor.from_pretrained(str(files.whisper_dir))
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{files.root}: cannot load the VAE or whisper: {str(exc).splitlines()[0]}") from None
        self.encoder: Any = whisper.get_encoder().eval()
        if self.encoder.config.d_model != cross_dim:
            raise CheckpointError(f"{files.root}: whisper gives {self.encoder.config.d_model}-wide features, the UNet attends to {cross_dim}")
        self.scale = float(self.vae.config.scaling_factor)
        self.pe = position_encoding(CLIP_FRAMES * (self.encoder.config.encoder_layers + 1), self.encoder.config.d_model)
        for module in (self.unet, self.vae, self.encoder):
            module.to(self.device, self.dtype)
        self.pe = self.pe.to(self.device, self.dtype)
        self._latents: collections.OrderedDict[tuple[Any, ...], torch.Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()
        # Latents on disk, named by the VAE's weights and the face's pixels: a restarted server,
        # or another worker, does not encode a character's faces again.
        self.latent_dir: Path | None = None
        if cache_dir is not None:
            weights = next(files.root / n for n in VAE_WEIGHTS if (files.root / n).is_file())
            stat = weights.stat()
            vae_id = hashlib.sha256(f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
            self.latent_dir = Path(cache_dir) / "musetalk-latents" / vae_id
            self.latent_dir.mkdir(parents=True, exist_ok=True)

    def _to_vae(self, faces: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(faces[..., ::-1])).to(self.device).permute(0, 3, 1, 2)
        return (x.to(self.dtype) / 127.5 - 1.0).contiguous()

    def reference_latents(self, items: Sequence[MuseTalkItem]) -> torch.Tensor:
        """(B, 8, 32, 32): masked and whole face latents, computed once per reference face."""
        with self._lock:
            missing = {it.face_key: it.face for it in items if it.face_key not in self._latents}
        for key in [k for k in missing if self._load_latents(k, missing[k])]:
            del missing[key]
        if missing:
            faces = self._to_vae(np.stack(list(missing.values())))
            masked = faces.clone()
            masked[:, :, FACE_SIZE // 2 :] = -1.0  # the lower half black (0 in 0..1)
            with torch.inference_mode():
                # the distribution's mean: the published code samples it, which only adds noise
                lat = self.vae.encode(torch.cat([masked, faces])).latent_dist.mean * self.scale
            n = len(missing)
            for k, (key, face) in enumerate(missing.items()):
                latents = torch.cat([lat[k], lat[n + k]])
                self._keep(key, latents)
                self._save_latents(face, latents)
        with self._lock:
            return torch.stack([self._latents[it.face_key] for it in items])

    def _keep(self, key: tuple[Any, ...], latents: torch.Tensor) -> None:
        with self._lock:
            self._latents[key] = latents
            while len(self._latents) > LATENT_CACHE:
                self._latents.popitem(last=False)

    def _latent_path(self, face: np.ndarray) -> Path | None:
        if self.latent_dir is None:
            return None
        return self.latent_dir / (hashlib.sha256(np.ascontiguousarray(face).tobytes()).hexdigest()[:32] + ".npy")

    def _load_latents(self, key: tuple[Any, ...], face: np.ndarray) -> bool:
        path = self._latent_path(face)
        if path is None or not path.is_file():
            return False
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return False  # a damaged file: encode again (and write it anew)
        if array.shape != (8, FACE_SIZE // 8, FACE_SIZE // 8):
            return False
        self._keep(key, torch.from_numpy(array).to(self.device, self.dtype))
        return True

    def _save_latents(self, face: np.ndarray, latents: torch.Tensor) -> None:
        path = self._latent_path(face)
        if path is None:
            return
        twin = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
        try:
            np.save(twin, latents.float().cpu().numpy())
            os.replace(twin, path)
        except OSError as exc:
            log.warning("musetalk: cannot keep latents in %s: %s", path.parent, exc.strerror or exc)
            twin.unlink(missing_ok=True)

    def input_features(self, audios: Sequence[np.ndarray], ats: Sequence[int] | None = None) -> np.ndarray:
        """Whisper's log-mel input, (B, 80, 3000), for clips of under 30 s, each starting *at*
        samples into the window: what its feature extractor gives for silence, the clip, then
        silence to 30 s, without computing a spectrogram of the silence (that cost ~30 ms a
        frame; this ~1). A little silence after each clip lets its last frames see what they
        would see in the padded window; the silence around is the extractor's floor after its
        normalisation: 8 dB (2 in its scale) under the loudest value, never under log10(1e-10)
        (-1.5)."""
        n_mel, n_frames = self.features.feature_size, self.features.nb_max_frames
        out = np.empty((len(audios), n_mel, n_frames), np.float32)
        for b, audio in enumerate(audios):
            at = 0 if ats is None else ats[b]
            if at % (2 * MEL_HOP) or at < 0 or at + len(audio) > self.features.n_samples:
                raise ValueError(f"a clip of {len(audio)} samples at {at} does not fit a whisper window on its 20 ms grid")
            mel = self.features(np.concatenate([audio, np.zeros(PAD_TAIL, np.float32)]), sampling_rate=16000, return_tensors="np", padding="longest").input_features[0]
            first = at // MEL_HOP
            n = min(mel.shape[1], n_frames - first)
            out[b] = max(-1.5, float(mel.max()) - 2.0)
            out[b, :, first : first + n] = mel[:, :n]
        return out

    def audio_tokens(self, items: Sequence[MuseTalkItem]) -> torch.Tensor:
        """(B, 50, 384): each frame's window of every encoder layer's features, position-encoded."""
        features = torch.from_numpy(self.input_features([it.audio for it in items], [it.at for it in items]))
        with torch.inference_mode():
            states = self.encoder(features.to(self.device, self.dtype), output_hidden_states=True).hidden_states
        stacked = torch.stack(states, dim=2)  # (B, 1500, layers + 1, dim)
        tokens = []
        for b, it in enumerate(items):
            first = first_encoder_frame(it.at + it.offset)
            clip = torch.zeros((CLIP_FRAMES,) + stacked.shape[2:], dtype=stacked.dtype, device=stacked.device)
            lo, hi = max(first, 0), min(first + CLIP_FRAMES, stacked.shape[1])
            if hi > lo:
                clip[lo - first : hi - first] = stacked[b, lo:hi]
            tokens.append(clip.reshape(-1, stacked.shape[-1]))
        return torch.stack(tokens) + self.pe

    def __call__(self, items: Sequence[MuseTalkItem]) -> list[np.ndarray]:
        latents = self.reference_latents(items)
        tokens = self.audio_tokens(items)
        with torch.inference_mode():
            predicted = self.unet(latents, 0, encoder_hidden_states=tokens).sample
            images = self.vae.decode(predicted / self.scale).sample
        pixels = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [np.ascontiguousarray(p[..., ::-1]) for p in pixels]
