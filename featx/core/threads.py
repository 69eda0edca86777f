"""Threads for the numeric libraries: as many as the CPUs this process may really use, and
waiting without spinning.

``usable_cpus()`` counts the CPUs of the process's affinity mask, capped by its cgroup's
CPU quota (a container started with ``--cpus=2`` on a 64-core host may use 2, though
it sees 64). OpenMP (torch's parallel loops) and OpenBLAS (numpy and scipy, under
scikit-learn) by default keep their idle threads spinning for a while after each
parallel region; beside another busy process that spinning takes the cores the
stragglers wait for, and a 1.6 s logistic regression took 41-77 s on 2 shared cores.
``environment()`` says what the command line sets before torch or numpy is loaded (they
read it once, at load): passive waiting, and thread counts equal to the usable CPUs
(divided among torchrun's processes on a node). A variable the user has set is kept.

The library itself changes no process-wide setting; library users who share cores can
export the same variables (docs/throughput.md).
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cpus, math.floor(quota))) if quota else cpus


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup's quota allows (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``), or None without a quota."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def environment(cpus: int | None = None, processes: int = 1) -> dict[str, str]:
    """The variables to set before torch and numpy load, for ``processes`` processes that
    share ``cpus`` (default: the usable CPUs)."""
    threads = str(max(1, (cpus or usable_cpus()) // max(1, processes)))
    return {
        "OMP_WAIT_POLICY": "PASSIVE",  # OpenMP threads sleep at once when idle
        "OPENBLAS_THREAD_TIMEOUT": "4",  # OpenBLAS threads sleep after 2^4 cycles, not 2^28
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
    }


def prepare(environ: dict | None = None) -> dict[str, str]:
    """Set :func:`environment`'s variables that ``environ`` (default: ``os.environ``) does
    not have; returns those set. Only before torch and numpy are loaded: after that they
    would not apply, and nothing is set."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or "numpy" in sys.modules:
        return {}
    processes = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # torchrun's processes on this node
    wanted = {k: v for k, v in environment(processes=processes).items() if k not in environ}
    environ.update(wanted)
    return wanted
