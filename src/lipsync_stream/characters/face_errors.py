"""What can go wrong with faces, in a module of its own: raised by the face code (:mod:`.faces`,
:mod:`.landmarks`) and by the MediaPipe loader (:mod:`.mediapipe_models`), which so need not
import each other."""

from __future__ import annotations


class FaceError(Exception):
    """The face data is unusable: unsafe, malformed, inconsistent, or there is no face."""


class FaceModelMissing(FaceError):
    """Faces must be found, and MediaPipe (the ``[faces]`` extra) is not installed."""
