"""What ``serve`` can be told (:class:`ServerConfig`), apart from the server that is told it, so
that the parts of the server (admission, sessions, runners) can read it without importing the
server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..characters.fetch import FetchConfig
from ..cpus import cpus
from ..engines import DEFAULT_ENGINE, engine_class
from ..pipeline import DEFAULT_JPEG_QUALITY
from ..wire.session import Limits


@dataclass
class ServerConfig:
    """Everything ``serve`` can be told: address, engine, limits, access, TLS, caches."""
    host: str = "127.0.0.1"
    port: int = 8765
    asset_roots: list[Path] = field(default_factory=list)
    engine: str = DEFAULT_ENGINE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    limits: Limits = field(default_factory=Limits)
    first_message_timeout: float = 10.0
    drain_timeout: float = 30.0  # on SIGTERM: how long running sessions may go on before they are closed
    send_timeout: float = 10.0  # a client that takes no frame for this long is not reading: closed
    character_memory_bytes: int = 2 * 1024**3
    fetch: FetchConfig | None = None
    render_threads: int = field(default_factory=cpus)
    reuse_port: bool = False  # several worker processes listen on one port (SO_REUSEPORT)
    #: sessions open at once; more are refused with `capacity` (1013). None: cores x the engine's
    #: sessions_per_core
    max_sessions: int | None = None
    max_loads: int = 2  # characters loading at once (their own threads, never the render threads)
    load_queue_timeout: float = 30.0  # a load that cannot start within this is refused with `capacity`
    #: keyless connections waiting to show a session token (None: 4 x max_sessions, at least 16)
    max_waiting: int | None = None
    #: keys file (``lipsync-stream keys``): with it, every session needs a key or a session token
    api_keys: Path | None = None
    allowed_origins: list[str] = field(default_factory=list)  # besides the server's own page
    #: Host names served besides loopback ones (a loopback server) or at all (others, when given)
    allowed_hosts: list[str] = field(default_factory=list)
    #: signs session tokens; workers of one server must share it (serve_workers passes it on)
    token_secret: bytes = field(default_factory=lambda: os.urandom(32))
    certfile: Path | None = None  # with keyfile: wss:// and https:// on the same port
    keyfile: Path | None = None
    metrics_port: int | None = None  # serve /metrics there (on metrics_host) instead of the main port
    metrics_host: str = "127.0.0.1"
    model: Path | None = None  # learned engines: the checkpoint
    device: str = "auto"  # learned engines: cpu, cuda, cuda:1, or auto (a GPU if torch sees one)
    fidelity: str = "tuned"  # learned engines: "reference" computes what the authors' inference code computes
    learned_frames_in_flight: int = 8  # an offline session's frames in the model's queue at once

    def fetch_config(self) -> FetchConfig:
        return self.fetch if self.fetch is not None else FetchConfig(asset_roots=[Path(p) for p in self.asset_roots])

    def session_limit(self) -> int:
        if self.max_sessions is not None:
            return self.max_sessions
        return cpus() * engine_class(self.engine).sessions_per_core
