"""The learned engines (Wav2Lip, MuseTalk): a mouth from a model served to every session in batches.

Wav2Lip, per frame, on the event loop: the frame's 16 mel frames (:mod:`..engines.melspec`, 200 ms from
the frame's start: hence this engine's lookahead) and the 96x96 crop of the reference face
(:mod:`..composite`). The shared :class:`~.service.InferenceService` runs the model on batches
of all sessions' frames; the generated face is pasted back through the lower-face mask in a
worker thread. MuseTalk (:mod:`.musetalk`): the audio around the frame and the 256x256 face go
to the service, which runs whisper, the UNet and the VAE in its thread. Frames of silence, or
near it, show the reference frame as it is (no model call).

``fidelity="reference"`` (``--fidelity reference``) computes what Wav2Lip's own ``inference.py``
computes instead (issue 26): the face box padded 10 px below (a Wav2Lip pickle's boxes as given),
scaled to 96 bilinearly, the mel of the whole utterance (reflected at its start and end, the last
16 columns for the frames past it), every frame through the model (silence too), its output
truncated to 8 bits, scaled back bilinearly and written over the whole box in float32 on any
device. The default, ``tuned``, keeps this project's choices, each measured (docs/engines.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..characters.fetch import default_cache_dir
from ..composite import crop_input, face_box, paste_box, paste_face
from ..cpus import cpus
from ..engines import melspec
from ..engines.base import Engine, EngineStream, LearnedMouth, MouthShape, ReferenceFrame, Region
from ..engines.interior import smoothstep
from ..wire.protocol import AudioFrame, frame_length
from . import CheckpointError
from .checkpoint import load_checkpoint
from .musetalk import CLIP_FRAMES, CLIP_LEFT, MEL_HOP, PAST_SAMPLES, SEGMENT_SAMPLES, WHISPER_RATE, MuseTalkFiles, MuseTalkItem, MuseTalkRunner, landmark_box
from .musetalk import FACE_SIZE as MUSETALK_FACE
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


#: the generated mouth fades in over this many dB above the quiet floor (below it: the reference's
#: closed lips, whatever the model would draw for breath or room noise)
QUIET_RANGE_DB = 10.0
GATE_DB = -50.0  # absolute floor: quieter than this is silence
FLOOR_BELOW_PEAK_DB = 38.0  # relative floor: this far under the loudest recent speech is silence too
PEAK_DECAY_DB_PER_FRAME = 0.03
FIDELITIES = ("tuned", "reference")
REFERENCE_PAD_BELOW = 10  # px: Wav2Lip's inference.py pads the detected box (top, bottom, left, right) by (0, 10, 0, 0)
# Frames past the end of an utterance read its last 16 mel columns: the window reaches that far back.
REFERENCE_CONTEXT = melspec.N_FFT // 2 + (melspec.STEPS + 2) * melspec.HOP


class QuietGate:
    """How much of a learned mouth to show, from the loudness of the audio the model hears:
    none under a floor (absolute, or far under the loudest recent speech), all of it
    QUIET_RANGE_DB above. A model draws something for breath and room noise too; under the floor
    the reference's own closed lips show instead, and no model time is spent."""

    def __init__(self) -> None:
        self.peak_db = -20.0

    def strength(self, heard: np.ndarray) -> float:
        samples = heard.astype(np.float32)
        level_db = 10.0 * float(np.log10(np.mean(samples * samples) / 32768.0**2 + 1e-12))
        self.peak_db = max(level_db, self.peak_db - PEAK_DECAY_DB_PER_FRAME, -35.0)
        floor_db = max(GATE_DB, self.peak_db - FLOOR_BELOW_PEAK_DB)
        return float(smoothstep(floor_db, floor_db + QUIET_RANGE_DB, level_db))

    def silent(self) -> None:
        """A frame of digital silence went by (the peak decays as it would)."""
        self.peak_db = max(self.peak_db - PEAK_DECAY_DB_PER_FRAME, -35.0)


class LearnedStream(EngineStream):
    """What every learned engine's stream does alike: silence shows the reference frame, and a
    generated face is pasted back through the lower-face mask at the gate's strength."""

    def __init__(self, reference: bool = False) -> None:
        self.gate = QuietGate()
        self.reference = reference  # --fidelity reference: what the published code computes

    def silent(self) -> bool:
        if self.reference:
            return False  # the reference runs the model on silence too
        self.gate.silent()
        return True  # digital silence: the reference frame as it is

    def box(self, ref: ReferenceFrame) -> tuple[int, int, int, int]:
        """The face crop the model sees and its face is pasted back into: the character's box
        (a Wav2Lip pickle's as given, else padded below)."""
        assert ref.box is not None, "learned engines need the character's face boxes"
        return face_box(ref.box, given=ref.box_given)

    def draw(self, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any = None) -> Region | None:
        if not isinstance(mouth, LearnedMouth) or generated is None or mouth.strength <= 0.0:
            return None  # the reference's own closed lips
        return paste_face(ref, self.box(ref), generated, mouth.strength)


class Wav2LipStream(LearnedStream):
    """One session's use of the Wav2Lip engine."""

    def __init__(self, engine: Wav2LipEngine) -> None:
        super().__init__(engine.fidelity == "reference")
        self.engine = engine

    def box(self, ref: ReferenceFrame) -> tuple[int, int, int, int]:
        if not self.reference:
            return super().box(ref)
        assert ref.box is not None, "learned engines need the character's face boxes"
        return face_box(ref.box, given=ref.box_given, pad_below=REFERENCE_PAD_BELOW)

    def draw(self, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any = None) -> Region | None:
        if not self.reference:
            return super().draw(ref, mouth, generated)
        return None if generated is None else paste_box(ref, self.box(ref), generated)

    def mouth(self, frame: AudioFrame, ref: ReferenceFrame) -> LearnedMouth:
        """The model's input (16 mel frames from the frame's start, the masked face crop) and how
        much of its mouth to show: none in near-silence, where the lips stay closed."""
        if self.reference:
            end = frame.start + frame.valid if frame.valid < len(frame.window) else None  # the stream has ended there
            mel = melspec.reference_frame_mel(frame.window, frame.start, frame.index, end)
            return LearnedMouth((mel, crop_input(ref.image, self.box(ref), FACE_SIZE, cv2.INTER_LINEAR)), 1.0)
        ctx = self.engine.context_samples
        strength = self.gate.strength(frame.window[ctx : ctx + melspec.SPAN_SAMPLES])
        if strength <= 0.0:
            return LearnedMouth(None, 0.0)
        mel = melspec.frame_mel(frame.window, frame.start, frame.index)
        return LearnedMouth((mel, crop_input(ref.image, self.box(ref), FACE_SIZE)), strength)


class Wav2LipEngine(Engine):
    """``--engine wav2lip --model CKPT``: loads the checkpoint once for the process."""

    name = "wav2lip"
    learned = True
    # 16 mel frames from the frame's start reach 3 400 samples past it (the last STFT window's
    # half): minus the frame's own 533 samples.
    lookahead_samples = melspec.LOOKAHEAD_SAMPLES - frame_length(0) + 1
    context_samples = melspec.CONTEXT_SAMPLES
    sessions_per_core = 1  # on a CPU the model makes ~20 frames/s: less than one real-time session

    def __init__(self, model: Path | None = None, device: str = "auto", max_batch: int = 32, max_wait: float = 0.005, fidelity: str = "tuned") -> None:
        if model is None:
            raise CheckpointError("the wav2lip engine needs a checkpoint: --model PATH (a Wav2Lip .pth, see docs/engines.md: Learned engines)")
        if fidelity not in FIDELITIES:
            raise ValueError(f"fidelity {fidelity!r}: one of {', '.join(FIDELITIES)}")
        self.fidelity = fidelity
        reference = fidelity == "reference"
        if reference:
            self.context_samples = REFERENCE_CONTEXT
        self.device = pick_device(device)
        if self.device == "cpu":
            import torch

            torch.set_num_threads(cpus())
        path = Path(model)
        runner: Callable[[Sequence[tuple[np.ndarray, np.ndarray]]], list[np.ndarray]]
        if path.suffix.lower() == ".onnx":
            runner = OnnxWav2LipRunner(path, self.device, truncate=reference)
            log.info("wav2lip: %s loaded in ONNX Runtime (%s)", path.name, ", ".join(runner.session.get_providers()))
        else:
            network = Wav2Lip()
            load_checkpoint(network, path)
            runner = Wav2LipRunner(network, self.device, reference=reference)
            log.info("wav2lip: %s loaded in PyTorch on %s%s", path.name, self.device, " (fidelity: reference)" if reference else "")
        self.service: InferenceService[tuple[np.ndarray, np.ndarray], np.ndarray] = InferenceService(runner, max_batch=max_batch, max_wait=max_wait, name="wav2lip")

    def stream(self) -> Wav2LipStream:
        return Wav2LipStream(self)

    def close(self) -> None:
        self.service.stop()


class MuseTalkStream(LearnedStream):
    """One session's use of the MuseTalk engine."""

    def __init__(self, engine: MuseTalkEngine) -> None:
        super().__init__(engine.fidelity == "reference")
        self.engine = engine

    def mouth(self, frame: AudioFrame, ref: ReferenceFrame) -> LearnedMouth:
        """The audio around the frame and the reference face (256x256 crop of its box, with
        MuseTalk's margin below the chin), and how much of the generated mouth to show."""
        ctx = self.engine.context_samples
        strength = 1.0 if self.reference else self.gate.strength(frame.window[ctx : ctx + frame_length(frame.index)])
        if strength <= 0.0:
            return LearnedMouth(None, 0.0)
        key, face = self.engine.face(ref)
        here = frame.start + ctx  # the frame's first sample in the stream
        segment = here - here % SEGMENT_SAMPLES  # the reference's 30 s segment that holds it
        grid = 2 * MEL_HOP
        first = max(segment, frame.start, 0)  # nothing before the stream or the segment
        first = -(-first // grid) * grid  # on whisper's 20 ms grid, as the segment's own frames are
        last = min(frame.start + len(frame.window), segment + SEGMENT_SAMPLES)
        audio = frame.window[first - frame.start : last - frame.start].astype(np.float32) / 32768.0
        item = MuseTalkItem(audio, here - first, face, key, at=first - segment)
        return LearnedMouth(item, strength)

    def box(self, ref: ReferenceFrame) -> tuple[int, int, int, int]:
        return self.engine.box(ref)


class MuseTalkEngine(Engine):
    """``--engine musetalk --model DIR``: MuseTalk 1.5 as published (UNet, VAE, whisper-tiny)."""

    name = "musetalk"
    learned = True
    # The frame's 10 encoder frames reach 6 x 20 ms past its start, and the encoder's convolutions
    # a little further; before it, 4 s give whisper's attention the context it would have offline
    # (bench/musetalk_context.py).
    lookahead_samples = (CLIP_FRAMES - CLIP_LEFT) * 16000 // WHISPER_RATE + 480 - frame_length(0)
    context_samples = PAST_SAMPLES
    sessions_per_core = 1

    def __init__(self, model: Path | None = None, device: str = "auto", max_batch: int = 16, max_wait: float = 0.005, cache_dir: Path | None = None, fidelity: str = "tuned") -> None:
        if model is None:
            raise CheckpointError("the musetalk engine needs its model directory: --model DIR (musetalkV15/, sd-vae/, whisper/ as MuseTalk publishes them)")
        if fidelity not in FIDELITIES:
            raise ValueError(f"fidelity {fidelity!r}: one of {', '.join(FIDELITIES)}")
        self.fidelity = fidelity
        if fidelity == "reference":
            # Whisper sees each frame's whole 30 s segment, as the reference encodes it: the
            # tokens are the whole utterance's, at the cost of waiting for the segment's end
            # (for rendering files; a live stream would lag by up to 30 s). No quiet gate.
            self.context_samples = self.lookahead_samples = SEGMENT_SAMPLES
        self.device = pick_device(device)
        if self.device == "cpu":
            import torch

            torch.set_num_threads(cpus())
        runner = MuseTalkRunner(MuseTalkFiles.find(Path(model)), self.device, cache_dir if cache_dir is not None else default_cache_dir())
        log.info("musetalk: %s loaded on %s", model, self.device)
        self.service: InferenceService[MuseTalkItem, np.ndarray] = InferenceService(runner, max_batch=max_batch, max_wait=max_wait, name="musetalk")
        self._faces: dict[tuple[Any, ...], np.ndarray] = {}

    @staticmethod
    def box(ref: ReferenceFrame) -> tuple[int, int, int, int]:
        """The face crop as MuseTalk's preprocessing centres it (from the landmarks: half above
        the lower nose bridge, half below, 10 px past the chin), else the character's box."""
        found = landmark_box(ref.landmarks, ref.image.shape[:2]) if ref.landmarks is not None else None
        if found is not None:
            return found
        assert ref.box is not None
        return face_box(ref.box, given=ref.box_given)

    def face(self, ref: ReferenceFrame) -> tuple[tuple[Any, ...], np.ndarray]:
        """The reference frame's 256x256 face crop and a key naming it (its pixels' fingerprint:
        a frame of another character at the same place in memory is another key)."""
        box = self.box(ref)
        key = (ref.index, box, hash(ref.image[::16, ::16].tobytes()))
        face = self._faces.get(key)
        if face is None:
            y1, y2, x1, x2 = box
            face = cv2.resize(ref.image[y1:y2, x1:x2], (MUSETALK_FACE, MUSETALK_FACE), interpolation=cv2.INTER_LANCZOS4)
            if len(self._faces) >= 4096:
                self._faces.clear()
            self._faces[key] = face
        return key, face

    def stream(self) -> MuseTalkStream:
        return MuseTalkStream(self)

    def close(self) -> None:
        self.service.stop()
