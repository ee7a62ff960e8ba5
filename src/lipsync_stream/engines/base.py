"""The engine interface: audio window -> mouth shape -> composited frame.

An engine knows nothing of websockets or sessions. The session gives it, per output frame, a
window of int16 audio (``context_samples`` before the frame, the frame, ``lookahead_samples``
after) and the reference frame to draw on. Engines keep per-stream state (smoothing) in an
:class:`EngineStream`, one per session, so that the same audio always gives the same frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocol import AudioFrame


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


class EngineStream(ABC):
    """Per-session engine state."""

    #: seconds spent computing audio features so far (engines that have a separate front end)
    feature_seconds: float = 0.0

    @abstractmethod
    def mouth(self, frame: AudioFrame) -> MouthShape:
        """Mouth shape for *frame*, whose window holds the audio around it (advances state)."""

    @abstractmethod
    def compose(self, ref: ReferenceFrame, shape: MouthShape) -> np.ndarray:
        """Draw *shape* on the reference frame; returns a new (512, 512, 3) uint8 BGR image."""

    def silent(self) -> bool:
        """Step over a frame whose whole audio window is digital silence, if its mouth is sure to
        be the rest shape; its picture is then the same for every such frame of a reference frame
        (and can be cached). Returns False, changing nothing, when the frame must be analysed
        (the mouth is still closing, say). Engines that cannot tell keep this default.
        """
        return False

    def model_input(self, frame: AudioFrame, ref: ReferenceFrame, box: np.ndarray) -> Any:
        """Learned engines: what the shared model needs for *frame* (cheap: on the event loop)."""
        raise NotImplementedError(f"{type(self).__name__} draws frames itself; it has no model")

    def compose_output(self, ref: ReferenceFrame, box: np.ndarray, output: Any) -> tuple[int, np.ndarray]:
        """Learned engines: the model's *output* pasted onto *ref*, as (first row, band of rows)."""
        raise NotImplementedError(f"{type(self).__name__} draws frames itself; it has no model")

    def compose_rows(self, ref: ReferenceFrame, shape: MouthShape) -> tuple[int, np.ndarray] | None:
        """Only the rows that change: (first row, full-width band whose top and height are
        multiples of 16), or None when the frame is the reference itself. Lets the JPEG encoder
        reuse the reference's other rows; engines that cannot tell return the whole frame."""
        return 0, self.compose(ref, shape)


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
    #: sessions; frame-at-a-time engines draw in the render threads
    learned: bool = False
    service: Any = None

    def close(self) -> None:  # noqa: B027 - a default: most engines hold nothing to release
        """Release what the engine holds (a learned engine stops its model's service)."""

    @abstractmethod
    def stream(self) -> EngineStream:
        """A fresh per-session stream."""
