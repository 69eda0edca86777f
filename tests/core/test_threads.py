"""Thread counts from the CPUs featx may really use, and OpenMP/OpenBLAS waiting passively."""
from __future__ import annotations

import os
import subprocess
import sys

from featx.core import threads
from support.crash import ROOT


def test_the_cgroup_quota_caps_the_cpus(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 CPUs
    assert threads.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_quota(tmp_path) is None
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)
    assert threads.usable_cpus() == 1  # whole CPUs within the quota
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 64.0)
    assert threads.usable_cpus() == len(os.sched_getaffinity(0))  # the affinity mask is less


def test_threads_are_shared_among_a_nodes_processes_and_wait_passively():
    env = threads.environment(cpus=16, processes=4)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert threads.environment(cpus=2, processes=8)["OMP_NUM_THREADS"] == "1"


def test_prepare_keeps_what_the_user_set_and_does_nothing_once_torch_is_loaded():
    import torch  # noqa: F401 - in this process: too late, nothing is set

    env = {"OMP_NUM_THREADS": "3"}
    assert threads.prepare(env) == {} and env == {"OMP_NUM_THREADS": "3"}
    code = ("import os, sys\nfrom featx.core import threads\n"
            "env = {'OMP_NUM_THREADS': '3', 'LOCAL_WORLD_SIZE': '1'}\n"
            "print(sorted(threads.prepare(env)), env['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split("]")
    assert "'OMP_WAIT_POLICY'" in out[0] and "'OMP_NUM_THREADS'" not in out[0] and out[1].strip() == "3"


def test_the_command_line_sets_them_before_torch_loads(tmp_path):
    """The variables a featx command's torch and numpy were loaded with."""
    code = ("import os, sys\nfrom featx.cli import main\nmain(['cache', 'ls', '--cache', sys.argv[1]])\n"
            "import torch\nprint(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'), "
            "torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in threads.environment()}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         check=True, env={**env, "PYTHONPATH": str(ROOT)}).stdout.split()
    cpus = str(threads.usable_cpus())
    assert out[-3:] == ["PASSIVE", cpus, cpus]
