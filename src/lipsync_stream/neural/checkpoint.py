"""Loading model checkpoints safely, and refusing what is not one with a message that says why.

A checkpoint is untrusted data: it is read with ``torch.load(weights_only=True)``, which builds
tensors and plain containers only, so a pickle that tries to run code is refused and nothing in
it runs. Accepted: the training-save format (``{"state_dict": ..., "optimizer": ...}``) and a bare
state dict, with or without the ``module.`` prefix ``DataParallel`` adds. Refused, naming the
problem: TorchScript archives (code, not weights), truncated or foreign files, and a layout that
does not fit the network (missing and unexpected keys, the first mismatched shape).
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import CheckpointError

MAX_CHECKPOINT_BYTES = 2 * 1024**3  # a training save of Wav2Lip (weights and optimizer) is ~430 MB


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _reason(exc: BaseException) -> str:
    """The telling line of torch's message (never its advice to load without weights_only)."""
    noise = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(noise)]
    return (lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__)[:200]


def read_state_dict(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, ``module.`` prefixes removed (memory-mapped, on the CPU)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from None
    if size > max_bytes:
        raise CheckpointError(f"{path.name} is {size} bytes; a checkpoint for this model is far smaller (at most {max_bytes})")
    if _is_torchscript(path):
        raise CheckpointError(f"{path.name} is a TorchScript archive (a program, not weights); save the weights with torch.save(model.state_dict(), ...)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path.name} holds more than tensors and plain containers and was refused; nothing in it ran ({_reason(exc)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path.name} is truncated or not a PyTorch checkpoint ({_reason(exc)})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path.name} holds no state dict: expected a mapping of names to tensors, or one under 'state_dict'")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy *state* into *model* after checking that every key and shape fits, naming what does not."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source} does not have this model's layout: " + "; ".join(parts))
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            got, want = "x".join(map(str, state[name].shape)), "x".join(map(str, tensor.shape))
            raise CheckpointError(f"{source} does not have this model's layout: {name} is {got or 'a scalar'}, expected {want or 'a scalar'}")
    model.load_state_dict(dict(state), strict=True)


def load_checkpoint(model: nn.Module, path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> nn.Module:
    """*model* with the weights of *path*, in evaluation mode."""
    load_into(model, read_state_dict(path, max_bytes), Path(path).name)
    return model.eval()
