"""Learned engines (PyTorch; the ``[neural]`` extra). Nothing here is imported by the default install.

- :mod:`.wav2lip` — the Wav2Lip 96x96 generator, written from the published layer list;
- :mod:`.checkpoint` — loading checkpoints safely (``weights_only``), refusing what is not one.
"""

from __future__ import annotations


class NeuralUnavailable(RuntimeError):
    """PyTorch (or ONNX Runtime) is not installed; the message says how to install it."""


class CheckpointError(Exception):
    """The file is not a usable checkpoint for this model (or the device cannot run it)."""


#: what can stop a learned engine from starting; each says why in its message
ENGINE_ERRORS = (NeuralUnavailable, CheckpointError)


def require_torch() -> None:
    """Raise a clear error (how to install the ``[neural]`` extra) when PyTorch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise NeuralUnavailable("learned engines need PyTorch: pip install 'lipsync-stream[neural]'") from None
