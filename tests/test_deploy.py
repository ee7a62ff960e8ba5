"""Deployment: two replicas behind Debian's HAProxy with deploy/haproxy.cfg, one drained mid-stream."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port, wait_healthy

from lipsync_stream.client import stream_audio
from lipsync_stream.wire.protocol import SessionParams, frames_for_samples

ROOT = Path(__file__).resolve().parents[1]


def sessions_started(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("lipsync_sessions_total ")))


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="Debian's haproxy is not installed (.ci/run installs it)")
def test_two_replicas_behind_haproxy_one_drained_mid_stream(tmp_path: Path, speech: np.ndarray) -> None:
    ports = [free_port(), free_port()]
    lb = free_port()
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "lipsync_stream", "serve", "--port", str(p), "--workers", "1", "--drain-timeout", "20", "--cache-dir", str(tmp_path / "cache")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    env = dict(os.environ, LIPSYNC_LB_BIND=f"127.0.0.1:{lb}", LIPSYNC_REPLICA_1=f"127.0.0.1:{ports[0]}", LIPSYNC_REPLICA_2=f"127.0.0.1:{ports[1]}")
    balancer = None
    try:
        for p in ports:
            wait_healthy(f"http://127.0.0.1:{p}/healthz")
        balancer = subprocess.Popen(["haproxy", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_healthy(f"http://127.0.0.1:{lb}/healthz")
        time.sleep(1.2)  # both replicas pass their checks (rise 2, every 0.5 s)
        url = f"ws://127.0.0.1:{lb}/LipsyncStream"
        pcm = speech[8000:56000]  # 3 s, played at real time

        async def session() -> int:
            frames = [f async for f in stream_audio(url, pcm, SessionParams(realtime=True))]
            assert [f.index for f in frames] == list(range(frames_for_samples(len(pcm))))
            assert b"".join(f.audio or b"" for f in frames) == pcm.tobytes()
            return len(frames)

        async def scenario() -> None:
            running = [asyncio.create_task(session()) for _ in range(8)]
            await asyncio.sleep(1.0)
            on_first = sessions_started(ports[0])
            assert 1 <= on_first <= 7  # least connections spread them
            replicas[0].send_signal(signal.SIGTERM)  # mid-stream: its sessions have 20 s to finish
            await asyncio.sleep(1.5)  # the balancer sees /healthz answer 503 draining
            later = [asyncio.create_task(session()) for _ in range(4)]
            assert all(n == frames_for_samples(len(pcm)) for n in await asyncio.gather(*running, *later))
            assert sessions_started(ports[1]) == 8 - on_first + 4  # every new session went to the healthy replica

        asyncio.run(scenario())
        assert replicas[0].wait(timeout=30) == 0  # drained: its sessions finished, then it stopped
    finally:
        for proc in [*replicas, *([balancer] if balancer else [])]:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    import yaml

    manifests = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    kinds = set()
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    gpu = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment-gpu.yaml").read_text())
    container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # readiness on /healthz (503 when full or draining), liveness on /livez (never for a busy pod)
    cpu = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    spec = cpu["spec"]["template"]["spec"]
    probe = spec["containers"][0]
    assert probe["readinessProbe"]["httpGet"]["path"] == "/healthz" and probe["livenessProbe"]["httpGet"]["path"] == "/livez"
    drain = float(probe["args"][probe["args"].index("--drain-timeout") + 1])
    assert spec["terminationGracePeriodSeconds"] > drain + 5  # the drain and the preStop wait fit
