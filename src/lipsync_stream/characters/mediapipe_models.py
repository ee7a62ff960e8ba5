"""MediaPipe's legacy ``solutions`` (face detection, face mesh), imported quietly.

Their models ship inside the mediapipe wheel, so nothing is downloaded. The C++ side logs to
stderr through glog and protobuf warns about a deprecated call; neither tells a user anything.
glog honours ``GLOG_minloglevel``, but TensorFlow Lite and absl write a few lines straight to the
process's stderr while a graph starts, before absl's logging is set up; :func:`native_noise_filtered`
passes stderr through a filter while that happens, dropping only those lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType

from .face_errors import FaceModelMissing

#: what MediaPipe's C++ side prints while a graph starts (nothing a user can act on)
NATIVE_NOISE = re.compile(
    rb"^(INFO: Created TensorFlow Lite XNNPACK delegate|WARNING: All log messages before absl::InitializeLog\(\)|"
    rb"[WIE]\d{4} [\d:.]+ +\d+ (inference_feedback_manager|gl_context|landmark_projection_calculator)\.cc)"
)
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """While inside, file descriptor 2 goes through a pipe: lines matching NATIVE_NOISE are
    dropped, every other line (another thread's log, say) is passed on to the real stderr."""
    with _STDERR_LOCK:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)

        def pump() -> None:
            with os.fdopen(read_end, "rb") as pipe:
                for line in pipe:
                    if not NATIVE_NOISE.match(line):
                        os.write(real, line)

        pumping = threading.Thread(target=pump, name="stderr-filter", daemon=True)
        pumping.start()
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(real, 2)  # the pipe's last write end closes: the pump reads to its end
            pumping.join(5.0)
            os.close(real)


MISSING = (
    "finding faces needs MediaPipe, which is not installed here (pip install 'lipsync-stream[faces]'); "
    "without it only the default character and characters made by `prepare` (a video with its .landmarks.npz beside it) load"
)


def available() -> bool:
    """Whether MediaPipe's face models can be loaded (the ``[faces]`` extra is installed)."""
    import importlib.util

    return importlib.util.find_spec("mediapipe") is not None


def solutions() -> ModuleType:
    """``mediapipe.python.solutions``, imported with its glog and protobuf warnings off."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from mediapipe.python import solutions as mp_solutions
        except ImportError as exc:
            raise FaceModelMissing(MISSING) from exc
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")
    return mp_solutions
