"""Prometheus metrics of one server process (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.16, 0.25, 0.32, 0.5, 0.75, 1.0, 2.0, 5.0)
RENDER_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1)


class Metrics:
    """Counters for sessions, frames, errors; histograms for frame latency and render time."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("lipsync_sessions_active", "Sessions open now", registry=r)
        self.sessions_capacity = Gauge("lipsync_sessions_capacity", "Sessions this process accepts at once (--max-sessions)", registry=r)
        self.sessions = Counter("lipsync_sessions", "Sessions started", registry=r)
        self.frames = Counter("lipsync_frames", "Frame messages sent", registry=r)
        self.held_frames = Counter("lipsync_held_frames", "Learned engines: late real-time frames that kept the last generated mouth (never behind real time)", registry=r)
        self.silent_frames = Counter("lipsync_silent_frames", "Frames sent as the reference picture without rendering (silence, mouth at rest)", registry=r)
        self.audio_seconds = Counter("lipsync_audio_in_seconds", "Seconds of audio received", registry=r)
        self.errors = Counter("lipsync_errors", "Sessions ended by an error, by kind", ["kind"], registry=r)
        self.refusals = Counter("lipsync_refusals", "Websocket upgrades and token requests refused before a session, by error kind", ["kind"], registry=r)
        self.key_sessions = Counter("lipsync_key_sessions", "Sessions started, by API key name", ["key"], registry=r)
        self.key_sessions_active = Gauge("lipsync_key_sessions_active", "Sessions open now, by API key name", ["key"], registry=r)
        self.key_audio_seconds = Counter("lipsync_key_audio_in_seconds", "Seconds of audio received, by API key name", ["key"], registry=r)
        self.frame_latency = Histogram(
            "lipsync_frame_latency_seconds",
            "From a frame's audio having arrived to the frame being handed to the network (pacing included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.render_time = Histogram("lipsync_render_seconds", "Time to render and encode one frame", buckets=RENDER_BUCKETS, registry=r)
        self.stage_seconds = Counter(
            "lipsync_stage_seconds", "Time spent per stage of finished sessions (features, engine, compose, encode, send)", ["stage"], registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
