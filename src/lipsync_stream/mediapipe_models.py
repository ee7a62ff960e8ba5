"""MediaPipe's legacy ``solutions`` (face detection, face mesh), imported quietly.

Their models ship inside the mediapipe wheel, so nothing is downloaded. The C++ side logs to
stderr through glog and protobuf warns about a deprecated call; neither tells a user anything.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType


def solutions() -> ModuleType:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mediapipe.python import solutions as mp_solutions
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")
    return mp_solutions
