"""The Wav2Lip generator (96x96), written from the published layer list.

Its state dict has exactly the keys and shapes of the public checkpoint (352 entries, 36,298,035
trainable parameters; ``tests/test_neural.py`` pins them against ``shared/models/wav2lip.keys.tsv``),
so the checkpoints people have load into it.

Inputs, per frame: a face crop of 96x96 in 6 channels (the reference face with its lower half
blacked out, then the reference face itself; BGR, 0..1) and 16 mel frames of 80 bands (200 ms of
audio from the frame's start). Output: the 96x96 face, BGR, 0..1. The face encoder halves the
crop six times to 1x1; the audio encoder reduces the mel window to one 512-vector; the decoder
grows the audio code back to 96x96, joined at each size with the face encoder's features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import CheckpointError, NeuralUnavailable

FACE_SIZE = 96
MEL_BANDS = 80
MEL_STEPS = 16  # mel frames per video frame


class ConvBlock(nn.Module):
    """Convolution (or transposed convolution), batch norm, optional residual, ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int | tuple[int, int], padding: int, residual: bool = False, transpose: bool = False, output_padding: int = 0
    ) -> None:
        super().__init__()
        conv: nn.Module = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding) if transpose else nn.Conv2d(cin, cout, kernel, stride, padding)
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return F.relu(out)


def _down(cin: int, cout: int, residuals: int) -> nn.Sequential:
    """A stride-2 block that halves the face, followed by residual blocks at that size."""
    return nn.Sequential(ConvBlock(cin, cout, 3, 2, 1), *(ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)))


def _up(cin: int, cout: int, residuals: int, stride: int = 2, padding: int = 1, output_padding: int = 1) -> nn.Sequential:
    """A transposed block that doubles the face, followed by residual blocks at that size."""
    first = ConvBlock(cin, cout, 3, stride, padding, transpose=True, output_padding=output_padding)
    return nn.Sequential(first, *(ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(residuals)))


class Wav2Lip(nn.Module):
    """The 96x96 Wav2Lip generator: audio and face encoders, a face decoder with skip connections."""
    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 96
                _down(16, 32, 2),  # 48
                _down(32, 64, 3),  # 24
                _down(64, 128, 2),  # 12
                _down(128, 256, 2),  # 6
                _down(256, 512, 1),  # 3
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 1
            ]
        )
        res = {"residual": True}
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1), ConvBlock(32, 32, 3, 1, 1, **res), ConvBlock(32, 32, 3, 1, 1, **res),  # 80x16
            ConvBlock(32, 64, 3, (3, 1), 1), ConvBlock(64, 64, 3, 1, 1, **res), ConvBlock(64, 64, 3, 1, 1, **res),  # 27x16
            ConvBlock(64, 128, 3, 3, 1), ConvBlock(128, 128, 3, 1, 1, **res), ConvBlock(128, 128, 3, 1, 1, **res),  # 9x6
            ConvBlock(128, 256, 3, (3, 2), 1), ConvBlock(256, 256, 3, 1, 1, **res),  # 3x3
            ConvBlock(256, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0),  # 1x1
        )  # fmt: skip
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),  # 1, joined with the 512 face features
                _up(1024, 512, 1, stride=1, padding=0, output_padding=0),  # 3
                _up(1024, 512, 2),  # 6
                _up(768, 384, 2),  # 12
                _up(512, 256, 2),  # 24
                _up(320, 128, 2),  # 48
                _up(160, 64, 2),  # 96
            ]
        )
        self.output_block = nn.Sequential(ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """(B, 1, 80, 16) mel windows and (B, 6, 96, 96) faces -> (B, 3, 96, 96) faces."""
        features = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), features.pop()), dim=1)
        return self.output_block(x)


class Wav2LipRunner:
    """The model function the inference service calls: a batch of (mel, face) inputs -> faces.

    Inputs per frame: a (80, 16) float32 mel window and a (6, 96, 96) float32 face (masked
    reference, then reference; BGR, 0..1). Output per frame: a (96, 96, 3) uint8 BGR face, rounded.
    On a CUDA device the model runs in half precision. *reference*: as Wav2Lip's inference.py,
    float32 everywhere and the output truncated to 8 bits.
    """

    def __init__(self, model: Wav2Lip, device: str = "cpu", reference: bool = False) -> None:
        self.device = torch.device(device)
        self.reference = reference
        self.dtype = torch.float16 if self.device.type == "cuda" and not reference else torch.float32
        # channels-last convolutions: a fifth faster at batch 1 on the CPU, the same on a GPU
        self.model = model.to(self.device, self.dtype).to(memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # Module.to takes it; the stubs do not say so

    def __call__(self, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        mel = torch.from_numpy(np.stack([m for m, _ in items]))[:, None].to(self.device, self.dtype)
        face = torch.from_numpy(np.stack([f for _, f in items])).to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model(mel, face)
        scaled = out.float().clamp(0.0, 1.0) * 255.0
        pixels = (scaled if self.reference else scaled.round()).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(pixels)


class OnnxWav2LipRunner:
    """The same model function over an ONNX export of the network, run by ONNX Runtime.

    The export must take ``mel`` (B, 1, 80, 16) and ``face`` (B, 6, 96, 96) float inputs (by
    position if named otherwise) and give (B, 3, 96, 96); anything else is refused by name.
    """

    def __init__(self, path: Path, device: str = "cpu", truncate: bool = False) -> None:
        self.truncate = truncate  # to 8 bits as Wav2Lip's inference.py does (else rounded)
        try:
            import onnxruntime as ort
        except ImportError:
            raise NeuralUnavailable("ONNX models need ONNX Runtime: pip install 'lipsync-stream[neural]'") from None
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=[p for p in providers if p in ort.get_available_providers()])
        except Exception as exc:  # ONNX Runtime raises its own exception types for every kind of bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path.name} is not an ONNX model ONNX Runtime can run: {first[:300]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shapes = [list(i.shape) for i in inputs]
        if len(inputs) != 2 or len(outputs) != 1 or [s[1:] for s in shapes] != [[1, MEL_BANDS, MEL_STEPS], [6, FACE_SIZE, FACE_SIZE]]:
            got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
            raise CheckpointError(f"{path.name} is not a Wav2Lip export: it takes {got}; expected mel (B, 1, 80, 16) and face (B, 6, 96, 96)")
        if list(outputs[0].shape)[1:] != [3, FACE_SIZE, FACE_SIZE]:
            raise CheckpointError(f"{path.name} is not a Wav2Lip export: it gives {outputs[0].shape}; expected (B, 3, 96, 96)")
        self._names = [i.name for i in inputs]

    def __call__(self, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        mel = np.stack([m for m, _ in items])[:, None].astype(np.float32)
        face = np.stack([f for _, f in items]).astype(np.float32)
        (out,) = self.session.run(None, {self._names[0]: mel, self._names[1]: face})
        scaled = np.clip(out, 0.0, 1.0) * 255.0
        pixels = (scaled if self.truncate else np.round(scaled)).astype(np.uint8).transpose(0, 2, 3, 1)
        return list(pixels)
