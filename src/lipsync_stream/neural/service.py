"""The inference service: one model per process and device, shared by every session, in batches.

Sessions never call a model. They open a place in the service (refused past *max_sessions*, so
a new session hears ``capacity`` instead of every session slowing down), submit one request per
frame and get a future back. A thread of the service gathers the requests of all sessions, up
to *max_batch* of them or until *max_wait* seconds have passed since the oldest arrived, runs the
model once on the batch (off the event loop: PyTorch and ONNX Runtime release the GIL while they
compute) and resolves each request's future. ``cancel(session)`` drops a session's queued
requests (``SKIP``, or a client that went away); requests already in a running batch finish.

The model is a plain function from a list of inputs to a list of outputs, so the service knows
nothing of Wav2Lip, torch or images; :class:`ServiceStats` feeds ``/metrics``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class ServiceFull(Exception):
    """The service already serves as many sessions as it can keep in real time."""


class ServiceClosed(Exception):
    """The service has stopped; no more requests are taken."""


@dataclass
class ServiceStats:
    """Counters since the service started (read by the server's metrics)."""

    batches: int = 0
    items: int = 0
    cancelled: int = 0
    busy_seconds: float = 0.0  # time spent inside the model
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass
class _Request(Generic[In, Out]):
    session: int
    item: In
    future: Future[Out]
    arrived: float


class InferenceService(Generic[In, Out]):
    """Batches requests from all sessions into calls of *run* on a thread of its own."""

    def __init__(self, run: Callable[[Sequence[In]], Sequence[Out]], max_batch: int = 32, max_wait: float = 0.005, max_sessions: int | None = None, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_sessions = max_sessions
        self.name = name
        self.stats = ServiceStats()
        self._queue: collections.deque[_Request[In, Out]] = collections.deque()
        self._cond = threading.Condition()
        self._sessions: set[int] = set()
        self._ids = itertools.count(1)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"inference-{name}", daemon=True)
        self._thread.start()

    # --- sessions -------------------------------------------------------------------------------

    def open(self) -> int:
        """A place for one session; :class:`ServiceFull` past *max_sessions*."""
        with self._cond:
            if self._stopped:
                raise ServiceClosed(f"the {self.name} service has stopped")
            if self.max_sessions is not None and len(self._sessions) >= self.max_sessions:
                raise ServiceFull(f"the {self.name} model already serves {self.max_sessions} sessions, as many as it keeps in real time; try again later")
            session = next(self._ids)
            self._sessions.add(session)
            return session

    def close(self, session: int) -> None:
        """The session is over: its queued requests are dropped and its place freed."""
        self.cancel(session)
        with self._cond:
            self._sessions.discard(session)

    @property
    def sessions(self) -> int:
        with self._cond:
            return len(self._sessions)

    # --- requests -------------------------------------------------------------------------------

    def submit(self, session: int, item: In) -> Future[Out]:
        """Queue *item* for the model; the future resolves to its output."""
        future: Future[Out] = Future()
        with self._cond:
            if self._stopped:
                raise ServiceClosed(f"the {self.name} service has stopped")
            if session not in self._sessions:
                raise KeyError(f"session {session} is not open in the {self.name} service")
            self._queue.append(_Request(session, item, future, time.monotonic()))
            self._cond.notify()
        return future

    def cancel(self, session: int) -> int:
        """Drop the session's queued requests (their futures are cancelled); returns how many."""
        with self._cond:
            kept: collections.deque[_Request[In, Out]] = collections.deque()
            dropped = 0
            for request in self._queue:
                if request.session == session:
                    request.future.cancel()
                    dropped += 1
                else:
                    kept.append(request)
            self._queue = kept
            self.stats.cancelled += dropped
        return dropped

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def stop(self) -> None:
        """Stop taking requests, cancel what is queued, and let the thread end."""
        with self._cond:
            self._stopped = True
            for request in self._queue:
                request.future.cancel()
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(5.0)
        log.info("%s service stopped: %s", self.name, describe(self.stats))

    # --- the thread -----------------------------------------------------------------------------

    def _next_batch(self) -> list[_Request[In, Out]] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while len(self._queue) < self.max_batch and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if not self._queue:  # everything was cancelled meanwhile
                return []
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.perf_counter()
            try:
                outputs = self._run([r.item for r in live])
                if len(outputs) != len(live):
                    raise RuntimeError(f"the {self.name} model returned {len(outputs)} outputs for {len(live)} inputs")
            except Exception as exc:  # the batch's sessions hear it; the service goes on
                log.exception("the %s model failed on a batch of %d", self.name, len(live))
                for r in live:
                    r.future.set_exception(exc)
                continue
            finally:
                self._account(len(live), time.perf_counter() - started)
            for r, out in zip(live, outputs, strict=True):
                r.future.set_result(out)

    def _account(self, n: int, seconds: float) -> None:
        with self._cond:
            self.stats.batches += 1
            self.stats.items += n
            self.stats.busy_seconds += seconds
            self.stats.batch_sizes[n] += 1


def describe(stats: ServiceStats) -> dict[str, Any]:
    """A summary for logs and benchmarks: batches, mean batch size, seconds per item."""
    return {
        "batches": stats.batches,
        "items": stats.items,
        "mean_batch": stats.items / stats.batches if stats.batches else 0.0,
        "ms_per_item": 1000 * stats.busy_seconds / stats.items if stats.items else 0.0,
        "cancelled": stats.cancelled,
    }
