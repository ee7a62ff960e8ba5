"""Lip-sync engines, by name."""

from __future__ import annotations

from .base import CLOSED, Engine, EngineStream, MouthGeometry, MouthShape, ReferenceFrame
from .energy import EnergyEngine
from .viseme import VisemeEngine

ENGINES: dict[str, type[Engine]] = {VisemeEngine.name: VisemeEngine, EnergyEngine.name: EnergyEngine}
DEFAULT_ENGINE = VisemeEngine.name


def get_engine(name: str = DEFAULT_ENGINE) -> Engine:
    """An engine instance by name; the error lists what exists."""
    try:
        return ENGINES[name]()
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}") from None


__all__ = ["CLOSED", "DEFAULT_ENGINE", "ENGINES", "Engine", "EngineStream", "MouthGeometry", "MouthShape", "ReferenceFrame", "get_engine"]
