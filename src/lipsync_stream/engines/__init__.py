"""Lip-sync engines, by name.

The weight-free engines need numpy, OpenCV, numba and rocket-fft (numpy's FFT inside numba) only; learned ones (``wav2lip``) need the
``[neural]`` extra and a checkpoint, and are imported only when asked for.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from pathlib import Path

from .base import CLOSED, Engine, EngineStream, MouthGeometry, MouthShape, ReferenceFrame
from .energy import EnergyEngine
from .viseme import VisemeEngine

log = logging.getLogger(__name__)
ENGINES: dict[str, type[Engine]] = {VisemeEngine.name: VisemeEngine, EnergyEngine.name: EnergyEngine}
LEARNED_ENGINES = {"wav2lip": "lipsync_stream.neural.engine:Wav2LipEngine", "musetalk": "lipsync_stream.neural.engine:MuseTalkEngine"}
ENGINE_NAMES = sorted([*ENGINES, *LEARNED_ENGINES])
DEFAULT_ENGINE = VisemeEngine.name


def engine_class(name: str) -> type[Engine]:
    """The class of engine *name*; a learned one is imported now (it needs PyTorch)."""
    if name in ENGINES:
        return ENGINES[name]
    if name not in LEARNED_ENGINES:
        raise ValueError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}")
    from ..neural import require_torch

    require_torch()
    module, attr = LEARNED_ENGINES[name].split(":")
    cls: type[Engine] = getattr(importlib.import_module(module), attr)
    return cls


def get_engine(name: str = DEFAULT_ENGINE, model: Path | None = None, device: str = "auto", cache_dir: Path | None = None, fidelity: str = "tuned") -> Engine:
    """An engine instance by name; learned engines load *model* on *device* (``auto``: a GPU if
    any), and those that keep work on disk (MuseTalk's face latents) keep it under *cache_dir*.
    *fidelity*: ``reference`` asks a learned engine that has one for its reference pipeline
    (what its authors' inference code computes) instead of this project's tuned one."""
    cls = engine_class(name)
    takes = inspect.signature(cls.__init__).parameters
    if fidelity != "tuned" and "fidelity" not in takes:
        raise ValueError(f"the {name} engine has no --fidelity {fidelity} (the wav2lip and musetalk engines have one)")
    if cls.learned:
        extra: dict[str, object] = {"cache_dir": cache_dir} if "cache_dir" in takes else {}
        if "fidelity" in takes:
            extra["fidelity"] = fidelity
        return cls(model=model, device=device, **extra)  # type: ignore[call-arg]
    if model is not None:
        raise ValueError(f"the {name} engine takes no model; --model is for learned engines ({', '.join(LEARNED_ENGINES)})")
    engine = cls()
    started = time.perf_counter()
    engine.warm_up()
    took = time.perf_counter() - started
    if took > 2.0:  # numba compiled the kernels: only on a machine's (or a cache's) first run
        log.info("the %s engine's compiled kernels were built in %.1f s (once: numba keeps them in its cache)", name, took)
    return engine


__all__ = ["CLOSED", "DEFAULT_ENGINE", "ENGINES", "ENGINE_NAMES", "Engine", "EngineStream", "MouthGeometry", "MouthShape", "ReferenceFrame", "engine_class", "get_engine"]
