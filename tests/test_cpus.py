"""The CPUs the defaults are sized by: the machine's, bounded by a container's quota."""

from __future__ import annotations

import os
from pathlib import Path

from lipsync_stream.cpus import quota_cpus, usable_cpus


def test_a_cgroup_v2_limit_bounds_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a Kubernetes limit of 1.5 CPUs
    assert quota_cpus(tmp_path) == 1.5
    assert usable_cpus(tmp_path) == min(2, os.cpu_count() or 1)


def test_no_quota_leaves_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cpus(tmp_path) is None
    assert usable_cpus(tmp_path) == min(os.cpu_count() or 1, len(os.sched_getaffinity(0)))


def test_a_cgroup_v1_quota_and_nothing_to_read(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path) == 0.5 and usable_cpus(tmp_path) == 1  # never fewer than one
    assert quota_cpus(tmp_path / "missing") is None
