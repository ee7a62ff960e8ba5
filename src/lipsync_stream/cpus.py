"""How many CPUs this process may use: what sizes the defaults (workers, render threads,
sessions, a CPU model's threads).

``os.cpu_count()`` counts the machine's cores; in a container that is the node's, whatever the
container may use. The count here is also bounded by the CPUs the process may run on (its
affinity: cpusets, Kubernetes' static CPU manager) and by a CPU quota (cgroup v2 ``cpu.max``,
or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``: Kubernetes' CPU limit), rounded up.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP) -> float | None:
    """CPUs' worth of the cgroup's quota, or None when there is none (or no cgroup to read)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 when there is none
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = CGROUP) -> int:
    """The cores, bounded by the affinity and the quota (at least 1)."""
    count = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        count = min(count, len(os.sched_getaffinity(0)))
    quota = quota_cpus(root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


@functools.cache
def cpus() -> int:
    """:func:`usable_cpus` of this process, worked out once."""
    return usable_cpus()
