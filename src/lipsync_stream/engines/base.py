"""The engine interface: per frame, its audio window and reference face -> the face region.

An engine knows nothing of websockets or sessions. It declares the audio it needs round each
output frame (``context_samples`` before the frame, ``lookahead_samples`` after); per frame the
session's renderer gives its stream that window and the character's reference frame (picture,
face box, landmarks), in two steps that every engine implements:

1. ``mouth(frame, ref)``: what this frame's mouth is, from the audio. Weight-free engines answer
   with a :class:`MouthShape`; learned ones with a :class:`LearnedMouth`, whose model input the
   renderer hands to the engine's shared inference service (in a batch with other sessions).
2. ``draw(ref, mouth, generated)``: the face region to composite: a band of full-width rows of
   the reference frame with the mouth in it (:data:`Region`), or None when the frame is the
   reference itself. *generated* is the model's output for a learned mouth.

The renderer composites every engine's region the same way (:func:`apply_region`, or spliced
into the reference frame's JPEG). Streams keep per-session state (smoothing), so that the same
audio always gives the same frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..wire.protocol import AudioFrame

if TYPE_CHECKING:
    from .footage import Footage
    from .mouthbank import InteriorBank


@dataclass(frozen=True)
class MouthGeometry:
    """Where the closed mouth is in a reference frame (pixels, 512x512 space)."""

    cx: float
    cy: float
    half_width: float
    angle: float = 0.0  # radians, positive = clockwise in image coordinates (mouth line tilt)


@dataclass(frozen=True)
class ReferenceFrame:
    """One frame of a character, with its mouth."""

    index: int
    image: np.ndarray  # (512, 512, 3) uint8 BGR, read-only
    mouth: MouthGeometry
    landmarks: np.ndarray | None = None  # (478, 2) face-mesh points, when the character has them
    box: np.ndarray | None = None  # (y1, y2, x1, x2) face box, when the character has one
    box_given: bool = False  # the box is a Wav2Lip face_det_results crop, padded already: used as given
    interiors: InteriorBank | None = None  # the character's own open-mouth interiors, if it has any
    footage: Footage | None = None  # the character's frames as a source of real mouths, if they vary enough
    #: the character's memo: what engines work out once per reference frame and keep, under keys
    #: of their own, bounded by them (None: nothing is kept with the character)
    memo: dict[str, Any] | None = None


@dataclass(frozen=True)
class MouthShape:
    """Mouth parameters for one frame, engine-independent.

    ``open``: 0 = lips closed (the reference frame unchanged), 1 = wide open.
    ``width``: -1 = narrow (o, u), 0 = neutral, 1 = spread (i, e).
    ``round``: 0..1, lips pushed forward into a round opening (o, u, w).
    ``tuck``: 0..1, lower lip raised against the upper teeth (f, v).
    """

    open: float = 0.0
    width: float = 0.0
    round: float = 0.0
    tuck: float = 0.0

    @property
    def is_rest(self) -> bool:
        return max(abs(self.open), abs(self.width), abs(self.round), abs(self.tuck)) <= 1e-3


CLOSED = MouthShape()


#: a face region: (first row, band of full-width rows of the frame), the band's top and height
#: multiples of 16 (JPEG MCU rows), so that the encoder can reuse the reference's other rows
Region = tuple[int, np.ndarray]


def apply_region(image: np.ndarray, region: Region | None) -> np.ndarray:
    """A copy of *image* with *region*'s rows in place: the whole composited frame."""
    out = image.copy()
    if region is not None:
        top, band = region
        out[top : top + len(band)] = band
    return out


@dataclass(frozen=True)
class LearnedMouth:
    """A learned engine's mouth for one frame, before its model has run.

    ``model_input``: what the engine's shared model takes for this frame. ``strength``: how much
    of the generated mouth to show, 0..1; 0 (near-silence) keeps the reference's closed lips and
    needs no model call at all.
    """

    model_input: Any
    strength: float = 1.0


class EngineStream(ABC):
    """Per-session engine state."""

    #: seconds spent computing audio features so far (engines that have a separate front end)
    feature_seconds: float = 0.0

    @abstractmethod
    def mouth(self, frame: AudioFrame, ref: ReferenceFrame) -> MouthShape | LearnedMouth:
        """The mouth for *frame*, whose window holds the audio around it (advances state)."""

    @abstractmethod
    def draw(self, ref: ReferenceFrame, mouth: MouthShape | LearnedMouth, generated: Any = None) -> Region | None:
        """The face region with *mouth* drawn on *ref* (learned: *generated*, its model output)."""

    def draw_rest(self, ref: ReferenceFrame) -> Region | None:
        """The rest picture of *ref*, lips closed: what silence shows (may close an open mouth)."""
        return self.draw(ref, CLOSED)

    def silent(self) -> bool:
        """Step over a frame whose whole audio window is digital silence, if its mouth is sure to
        be the rest shape; its picture is then the same for every such frame of a reference frame
        (and can be cached). Returns False, changing nothing, when the frame must be analysed
        (the mouth is still closing, say). Engines that cannot tell keep this default.
        """
        return False


class Engine(ABC):
    """A lip-sync engine: declares the audio it needs around each frame and makes streams."""

    name: str = "engine"
    #: samples after the frame's end that must have arrived before it can be rendered
    lookahead_samples: int = 0
    #: samples before the frame's start that the engine looks at (silence at the stream's start)
    context_samples: int = 0
    #: real-time sessions one CPU core can serve with headroom (the default session limit)
    sessions_per_core: int = 8
    #: learned engines run a model through ``self.service`` (an InferenceService) shared by all
    #: sessions, their streams answer ``mouth()`` with a LearnedMouth; frame-at-a-time engines
    #: draw in the render threads
    learned: bool = False
    service: Any = None

    def warm_up(self) -> None:  # noqa: B027 - a default: most engines have nothing to prepare
        """Prepare what the first frame would otherwise wait for (compiled kernels)."""

    def close(self) -> None:  # noqa: B027 - a default: most engines hold nothing to release
        """Release what the engine holds (a learned engine stops its model's service)."""

    @abstractmethod
    def stream(self) -> EngineStream:
        """A fresh per-session stream."""
