"""The Wav2Lip engine: the learned mouth, served to every session by one batched model.

Per frame, on the event loop: the frame's 16 mel frames (:mod:`..engines.melspec`, 200 ms from
the frame's start: hence this engine's lookahead) and the 96x96 crop of the reference face
(:mod:`..composite`). The shared :class:`~.service.InferenceService` runs the model on batches
of all sessions' frames; the generated face is pasted back through the lower-face mask in a
worker thread. Frames of digital silence show the reference frame as it is (no model call).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..composite import crop_input, face_box, paste_face
from ..engines import melspec
from ..engines.base import CLOSED, Engine, EngineStream, MouthShape, ReferenceFrame
from ..protocol import AudioFrame, frame_length
from . import CheckpointError
from .checkpoint import load_checkpoint
from .service import InferenceService
from .wav2lip import FACE_SIZE, OnnxWav2LipRunner, Wav2Lip, Wav2LipRunner

log = logging.getLogger(__name__)


def pick_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} asked for, but this torch sees no CUDA GPU (torch {torch.__version__})")
    return device


class Wav2LipStream(EngineStream):
    """One session's use of the engine: its inputs, and pasting its outputs back."""

    def __init__(self, engine: Wav2LipEngine) -> None:
        self.engine = engine

    def mouth(self, frame: AudioFrame) -> MouthShape:
        return CLOSED  # the mouth comes from the model; only silence reaches the shape path

    def silent(self) -> bool:
        return True  # digital silence: the reference frame as it is

    def compose(self, ref: ReferenceFrame, shape: MouthShape) -> np.ndarray:
        return ref.image.copy()

    def compose_rows(self, ref: ReferenceFrame, shape: MouthShape) -> tuple[int, np.ndarray] | None:
        return None

    def model_input(self, frame: AudioFrame, ref: ReferenceFrame, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mel = melspec.frame_mel(frame.window, frame.start, frame.index)
        return mel, crop_input(ref.image, face_box(box), FACE_SIZE)

    def compose_output(self, ref: ReferenceFrame, box: np.ndarray, output: Any) -> tuple[int, np.ndarray]:
        return paste_face(ref, face_box(box), output)


class Wav2LipEngine(Engine):
    """``--engine wav2lip --model CKPT``: loads the checkpoint once for the process."""

    name = "wav2lip"
    learned = True
    # 16 mel frames from the frame's start reach 3 400 samples past it (the last STFT window's
    # half): minus the frame's own 533 samples.
    lookahead_samples = melspec.LOOKAHEAD_SAMPLES - frame_length(0) + 1
    context_samples = melspec.CONTEXT_SAMPLES
    sessions_per_core = 1  # on a CPU the model makes ~20 frames/s: less than one real-time session

    def __init__(self, model: Path | None = None, device: str = "auto", max_batch: int = 32, max_wait: float = 0.005) -> None:
        if model is None:
            raise CheckpointError("the wav2lip engine needs a checkpoint: --model PATH (a Wav2Lip .pth, see README: Learned engines)")
        self.device = pick_device(device)
        if self.device == "cpu":
            import torch

            torch.set_num_threads(max(1, os.cpu_count() or 1))
        path = Path(model)
        runner: Callable[[Sequence[tuple[np.ndarray, np.ndarray]]], list[np.ndarray]]
        if path.suffix.lower() == ".onnx":
            runner = OnnxWav2LipRunner(path, self.device)
            log.info("wav2lip: %s loaded in ONNX Runtime (%s)", path.name, ", ".join(runner.session.get_providers()))
        else:
            network = Wav2Lip()
            load_checkpoint(network, path)
            runner = Wav2LipRunner(network, self.device)
            log.info("wav2lip: %s loaded in PyTorch on %s", path.name, self.device)
        self.service: InferenceService[tuple[np.ndarray, np.ndarray], np.ndarray] = InferenceService(runner, max_batch=max_batch, max_wait=max_wait, name="wav2lip")

    def stream(self) -> Wav2LipStream:
        return Wav2LipStream(self)

    def close(self) -> None:
        self.service.stop()
