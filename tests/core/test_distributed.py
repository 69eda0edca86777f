"""Under torchrun (Gloo on the CPU): sharded extraction gives the single-process store,
and a job with a killed process resumes, at the same or another world size; fine-tuning
trains with DDP. A killed DDP fine-tune and a whole pipeline run only with -m slow."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featx import store
from featx.core.distributed import World
from featx.data.sources import Item
from featx.data.sources.listing import Listing
from featx.extraction.plan import shard
from support.crash import commits, committed, run_featx, store_equal

ROOT = Path(__file__).resolve().parents[2]


def torchrun(n: int, args: list[str], cwd: Path) -> subprocess.Popen:
    """``featx ARGS`` under torchrun; an extraction commits every batch, so a kill lands between commits."""
    commits = ["--commit-rows", "1"] if args[0] == "extract" else []
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                             "--standalone", "-m", "featx", *args, *commits], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _workers(proc: subprocess.Popen) -> list[int]:
    """The pids of torchrun's worker processes: its own children (each in a session of
    its own; their decoding processes are their children in turn)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid, ppid in (line.split() for line in out.splitlines()) if int(ppid) == proc.pid]


def test_shards_are_whole_batches_dealt_round_robin():
    todo = Listing.of([Item(f"k{i:02d}", 0, "") for i in range(21)])
    parts = [shard(todo, 4, World(r, 2)) for r in range(2)]
    assert [it.key for it in parts[0]] == [f"k{i:02d}" for i in [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]]
    assert sorted(it.key for p in parts for it in p) == [it.key for it in todo]
    assert shard(todo, 4, World()) == todo


@pytest.fixture(scope="module")
def single(tmp_path_factory, hymenoptera):
    tmp = tmp_path_factory.mktemp("dist")
    args = ["extract", "--data", f"{hymenoptera}:hymenoptera/val", "--backbone", "efficientnet_lite0",
            "--image-size", "128", "--batch-size", "8", "--device", "cpu"]
    rc, out, err, _ = run_featx([*args, "--cache", str(tmp / "single")], tmp)
    assert rc == 0, err
    return tmp, args, out.splitlines()[-1]


def test_two_processes_write_the_single_process_store(single, monkeypatch):
    tmp, args, reference = single
    monkeypatch.setenv("FEATX_SHARD_ROWS", "40")  # 4 new shards: 2 written by each process
    proc = torchrun(2, [*args, "--cache", str(tmp / "two")], tmp)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1] == str(tmp / "two" / Path(reference).name)  # printed once, by the first process
    assert "153 images in the store: 153 embedded" in err
    store_equal(lines[-1], reference)
    assert store.verify(lines[-1]) == []
    written = sorted(p.name.split("-")[0] for p in store.snapshot.read(Path(lines[-1])).shards)
    assert written == ["rank000", "rank000", "rank001", "rank001"]


@pytest.mark.parametrize("interrupted", [False, True])
def test_a_touched_file_keeps_its_row_when_processes_share_the_work(tmp_path, interrupted):
    """A file whose stamp changed but whose bytes did not is re-stamped, not re-embedded,
    also when the first process joins everyone's commits into the store, and when an
    interrupted run left rows in the journal."""
    from support.imagegen import make_folder

    data = make_folder(tmp_path / "data", {"a": 8, "b": 8})
    args = ["extract", "--data", str(data), "--backbone", "pixels", "--device", "cpu", "--workers", "0",
            "--batch-size", "4"]
    rc, out, err, _ = run_featx([*args, "--cache", str(tmp_path / "cache")], tmp_path)
    assert rc == 0, err
    new = data / "b" / "new.jpg"
    new.write_bytes((data / "b" / "00.jpg").read_bytes()[:-2] + b"\xff\xd9")
    if interrupted:  # the new image's row is in the journal, as a killed run leaves it
        (tmp_path / "solo" / "b").mkdir(parents=True)
        shutil.copy2(new, tmp_path / "solo" / "b" / "new.jpg")
        rc, solo, err, _ = run_featx(["extract", "--data", str(tmp_path / "solo"), "--backbone", "pixels",
                                      "--cache", str(tmp_path / "solo-cache")], tmp_path)
        assert rc == 0, err
        store.Journal(Path(out.splitlines()[-1]), "rank001").commit(store.read(solo.splitlines()[-1]).rows)
    touched = data / "a" / "03.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    proc = torchrun(2, [*args, "--cache", str(tmp_path / "cache")], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"17 images in the store: {0 if interrupted else 1} embedded" in err
    rows = store.read(out.splitlines()[-1]).rows
    stamps = dict(zip(rows.keys.tolist(), rows.stamps.tolist()))
    assert stamps["a/03.jpg"] == f"{touched.stat().st_size}:{touched.stat().st_mtime_ns}"


@pytest.mark.parametrize("rerun_with", [2, 1])
def test_a_killed_process_and_a_rerun_at_any_world_size_give_the_same_store(single, rerun_with):
    tmp, args, reference = single
    cache = tmp / f"killed-{rerun_with}"
    proc = torchrun(2, [*args, "--cache", str(cache)], tmp)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(commits(cache, rank=1)) < 2:
        time.sleep(0.02)
    victims = _workers(proc)
    assert len(victims) == 2, victims
    os.kill(max(victims), signal.SIGKILL)  # one of the two processes dies
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not list(cache.glob("*.h5"))
    kept = committed(cache)
    assert 24 <= kept < 153

    if rerun_with == 1:
        rc, out, err, _ = run_featx([*args, "--cache", str(cache)], tmp)
    else:
        again = torchrun(2, [*args, "--cache", str(cache)], tmp)
        out, err = again.communicate(timeout=300)
        rc = again.returncode
    assert rc == 0, err
    assert f"153 images in the store: {153 - kept} embedded" in err and f"{kept} reused" in err
    store_equal(out.splitlines()[-1], reference)


@pytest.mark.slow
def test_two_nodes_meeting_at_a_rendezvous_write_the_single_process_store(single):
    """The README's multi-node recipe, both "nodes" on this machine: two torchrun
    launchers, one process each, meeting at a c10d rendezvous address."""
    import socket

    tmp, args, reference = single
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                               f"127.0.0.1:{port}", "--rdzv-id", "featx", "-m", "featx", *args, "--cache",
                               str(tmp / "nodes")], cwd=tmp,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(n.communicate(timeout=300), n.returncode) for n in nodes]
    assert all(rc == 0 for _, rc in results), [err for (_, err), _ in results]
    printed = [line for (out, _), _ in results for line in out.splitlines()]
    assert printed == [str(tmp / "nodes" / Path(reference).name)]  # by the first process only
    store_equal(printed[0], reference)


@pytest.mark.slow
def test_a_pipeline_under_torchrun_shares_the_extraction_and_reports_once(tmp_path):
    from support.imagegen import make_folder

    data = make_folder(tmp_path / "data", {"a": 20, "b": 20})
    (tmp_path / "p.yaml").write_text(
        f"name: dist\ndata: {{train: {data}, test_fraction: 0.3}}\nbackbones: [efficientnet_lite0]\n"
        "extract: {image_size: 64, batch_size: 8, device: cpu}\nheads: [logreg, knn]\n"
        "report: {efficiency: {shots: [2], draws: 1}}\n"
        "finetune: {strategies: [full], epochs: 1, batch_size: 4, shots: [2]}\n")
    proc = torchrun(2, ["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "two"), "--cache",
                        str(tmp_path / "cache2")], tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == f"report: {tmp_path / 'two' / 'report.html'}"  # once, by the first process
    rc, _, err, _ = run_featx(["run", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "one"), "--cache",
                               str(tmp_path / "cache1")], tmp_path)
    assert rc == 0, err
    for path in store.list_stores(tmp_path / "cache2"):
        store_equal(path, tmp_path / "cache1" / path.name)

    def results(folder, heads: bool):
        report = json.loads((folder / "report.json").read_text())
        return [{k: v for k, v in r.items() if "seconds" not in k and k != "extract_ms_per_image"}  # times
                for r in report["results"] if (r["method"] in ("logreg", "knn")) == heads]

    assert results(tmp_path / "two", heads=True) == results(tmp_path / "one", heads=True)
    trained = results(tmp_path / "two", heads=False)  # the fine-tune stage trained with both processes
    assert [r["method"] for r in trained] == ["finetune"]
    metrics = [json.loads(m.read_text()) for m in (tmp_path / "two" / "finetune").glob("*/metrics.json")]
    assert len(metrics) == 2 and all(m["processes"] == 2 for m in metrics)


def test_a_two_process_fine_tune_trains_an_epoch_and_its_model_loads(tmp_path):
    """One batch of one image per process, and one image cannot be decoded: the process
    that draws it has nothing to train on, so every process skips that batch together
    (otherwise the other one would wait for it forever in the gradient all-reduce)."""
    from featx.training import load_checkpoint
    from support.imagegen import make_folder

    data = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    (data / "a" / "broken.jpg").write_bytes((data / "a" / "00.jpg").read_bytes()[:200])
    val = make_folder(tmp_path / "val", {"a": 2, "b": 2}, start_seed=100)
    out = tmp_path / "run"
    proc = torchrun(2,
                    ["finetune", "--data", str(data), "--val", str(val), "--backbone", "efficientnet_lite0",
                     "--image-size", "64", "--epochs", "1", "--strategy", "full", "--batch-size", "1",
                     "--workers", "0", "--device", "cpu", "--out", str(out), "--cache",
                     str(tmp_path / "cache")],
                   tmp_path)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert stdout.splitlines() == [str(out / "model.pt")]  # printed once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["effective_batch_size"] == 2 and metrics["epochs_run"] == 1
    assert metrics["learning_rate"] == 1e-3
    assert metrics["n_train"] == 21
    # 21 images padded to 22 by the sampler (it repeats the first ones, so the broken one
    # may come twice); each batch holding it is skipped on both processes
    assert metrics["history"][-1]["train_images"] in (18, 20)
    assert metrics["history"][-1]["train_images_per_second"] > 0
    weights = load_checkpoint(out / "model.pt")
    assert all(not k.startswith("module.") for k in weights)  # the network's own names, not DDP's
    assert json.loads((out / "model.pt.json").read_text())["sha256"]


@pytest.mark.slow
def test_a_killed_two_process_fine_tune_resumes_to_the_uninterrupted_weights(tmp_path):
    import torch

    from featx.training import load_checkpoint
    from support.imagegen import make_folder

    data = make_folder(tmp_path / "data", {"a": 10, "b": 10})

    def args(out):
        return ["finetune", "--data", str(data), "--backbone", "efficientnet_lite0", "--image-size", "64",
                "--epochs", "3", "--patience", "9", "--strategy", "full", "--batch-size", "4", "--workers",
                "0", "--device", "cpu", "--out", str(tmp_path / out), "--cache", str(tmp_path / "cache")]

    whole = torchrun(2, args("whole"), tmp_path)
    assert whole.wait(timeout=300) == 0, whole.communicate()[1]
    killed = torchrun(2, args("killed"), tmp_path)
    while killed.poll() is None and not (tmp_path / "killed" / "last.pt").exists():
        time.sleep(0.02)
    victims = _workers(killed)
    assert len(victims) == 2
    os.kill(min(victims), signal.SIGKILL)
    killed.communicate(timeout=300)
    assert killed.returncode != 0 and not (tmp_path / "killed" / "metrics.json").exists()
    resumed = torchrun(2, [*args("killed"), "--resume"], tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming after epoch" in err
    a, b = load_checkpoint(tmp_path / "whole" / "model.pt"), load_checkpoint(tmp_path / "killed" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_gpu_process_under_torchrun_matches_the_cpu_store(single):
    """Sharded extraction on CUDA (NCCL, one process): the CPU store's features within
    the precision's tolerance; prints the images/s it ran at."""
    import numpy as np

    tmp, args, reference = single
    gpu_args = [a for a in args if a not in ("--device", "cpu")] + ["--device", "cuda"]
    proc = torchrun(1, [*gpu_args, "--cache", str(tmp / "gpu")], tmp)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    X, _, keys, _ = store.load(out.splitlines()[-1])
    Xc, _, keys_c, _ = store.load(reference)
    assert keys.tolist() == keys_c.tolist()
    cos = np.sum(X * Xc, 1) / np.linalg.norm(X, axis=1) / np.linalg.norm(Xc, axis=1)
    assert cos.min() > 0.99
    print(json.dumps({"images_per_second": store.info(out.splitlines()[-1])["provenance"]["throughput"],
                      "mean_cosine_to_cpu": float(cos.mean())}))
