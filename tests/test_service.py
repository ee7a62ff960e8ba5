"""The inference service: batches across sessions, order, cancel, capacity, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError

import pytest

from lipsync_stream.neural.service import InferenceService, ServiceFull, describe


class Recorder:
    """A 'model' that doubles numbers and remembers its batches; can be held on a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.gate.wait(10)
        self.batches.append(list(items))
        return [2 * x for x in items]


async def test_requests_of_many_sessions_are_batched_and_each_gets_its_own_answer() -> None:
    model = Recorder()
    service: InferenceService[int, int] = InferenceService(model, max_batch=16, max_wait=0.05)
    try:
        sessions = [service.open() for _ in range(8)]

        async def frames(s: int) -> list[int]:
            futures = [asyncio.wrap_future(service.submit(s, 100 * s + k)) for k in range(10)]  # a session's frames in flight
            return list(await asyncio.gather(*futures))

        results = await asyncio.gather(*(frames(s) for s in sessions))
        for s, got in zip(sessions, results, strict=True):
            assert got == [2 * (100 * s + k) for k in range(10)]  # in the session's order
        assert max(len(b) for b in model.batches) > 1 and all(len(b) <= 16 for b in model.batches)
        summary = describe(service.stats)
        assert summary["items"] == 80 and summary["mean_batch"] > 1
    finally:
        service.stop()


def test_a_lone_request_does_not_wait_for_a_full_batch() -> None:
    service: InferenceService[int, int] = InferenceService(Recorder(), max_batch=64, max_wait=0.002)
    try:
        assert service.submit(service.open(), 21).result(timeout=5) == 42
    finally:
        service.stop()


def test_cancel_drops_a_sessions_queued_requests_only() -> None:
    model = Recorder()
    model.gate.clear()  # the first batch is held inside the model
    service: InferenceService[int, int] = InferenceService(model, max_batch=1, max_wait=0.0)
    try:
        a, b = service.open(), service.open()
        running = service.submit(a, 0)
        while service.queued():  # the first request has left the queue, and waits inside the model
            time.sleep(0.001)
        queued_a = [service.submit(a, k) for k in range(1, 6)]
        queued_b = [service.submit(b, k) for k in range(1, 3)]
        assert service.cancel(a) == 5
        model.gate.set()
        assert running.result(timeout=5) == 0  # already running: it finishes
        for f in queued_a:
            with pytest.raises(CancelledError):
                f.result(timeout=5)
        assert [f.result(timeout=5) for f in queued_b] == [2, 4]
        assert service.stats.cancelled == 5
    finally:
        service.stop()


def test_sessions_beyond_capacity_are_refused_and_places_come_back() -> None:
    service: InferenceService[int, int] = InferenceService(Recorder(), max_sessions=2)
    try:
        first = service.open()
        service.open()
        with pytest.raises(ServiceFull, match="2 sessions"):
            service.open()
        service.close(first)
        service.open()
    finally:
        service.stop()


def test_a_failing_batch_fails_its_requests_and_the_service_goes_on() -> None:
    calls = []

    def flaky(items: Sequence[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return list(items)

    service: InferenceService[int, int] = InferenceService(flaky, max_batch=1)
    try:
        s = service.open()
        with pytest.raises(RuntimeError, match="out of memory"):
            service.submit(s, 1).result(timeout=5)
        assert service.submit(s, 2).result(timeout=5) == 2
    finally:
        service.stop()
