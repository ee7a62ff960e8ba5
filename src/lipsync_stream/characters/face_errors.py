"""What can go wrong with faces, in a module of its own: raised by the face code (:mod:`.faces`,
:mod:`.landmarks`) and by the model loader (:mod:`.facemodels`), which so need not import each
other."""

from __future__ import annotations


class FaceError(Exception):
    """The face data is unusable: unsafe, malformed, inconsistent, or there is no face."""


class FaceModelMissing(FaceError):
    """Faces must be found, and the face models are missing from the installed package."""
