"""SIGTERM (a cluster preempting the job) and SIGINT (Ctrl-C) stop an extraction with
the batches it had embedded committed: it says how many images it kept, exits with
128 + the signal's number, and the next run embeds only the rest and ends with the
store an uninterrupted run writes.

The child commits only when it ends (``--commit-rows 100000``, and it stops long before
the 30 s commit interval), so whatever it keeps was committed on the signal. A hook
planted in it holds one step (the network on a batch, or the decoding of an image) once
some images are embedded and says so in a file; the signal is sent when that file
appears, so it lands where the test means it to, without racing a sleep.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featx.core import signals
from featx.core.errors import Interrupted
from support.crash import ROOT, run_featx, store_equal
from support.imagegen import make_folder

IMAGES, BATCH = 200, 8
EXTRACT = ["extract", "--backbone", "pixels", "--batch-size", str(BATCH), "--workers", "2", "--device", "cpu",
           "--commit-rows", "100000"]

# Planted in the child: count the images through the network; from the batch after STOP
# images, hold the network ("network") or the decoding processes ("decoding") and write
# the count to PROGRESS. Every image through the network is kept: the batch whose
# features were not yet handed over (see featx.extraction.embed) is, on the signal.
# The terminal's Ctrl-C reaches a process whose SIGINT is Python's default, whatever
# the shell that started pytest left it as.
HOOK = """
import os, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from featx.extraction import forward as _forward, loader as _loader
PROGRESS = os.environ["HOOK_PROGRESS"] + "." + os.environ.get("RANK", "0")
STOP, GATE = int(os.environ["HOOK_STOP"]), os.environ["HOOK_GATE"]
seen = [0]

def progress():
    with open(PROGRESS + ".tmp", "w") as f:
        f.write(str(seen[0]))
    os.replace(PROGRESS + ".tmp", PROGRESS)

def forward(self, staged, _call=_forward.Forward.__call__):
    if GATE == "network" and seen[0] >= STOP:
        progress()
        time.sleep(120)
    out = _call(self, staged)
    seen[0] += sum(len(s) for s in staged.slices)
    if GATE == "decoding" and seen[0] >= STOP:
        progress()  # and the main process waits for the next batch
    return out

def decode(self, i, _decode=_loader.DecodedImages.__getitem__):
    if GATE == "decoding" and i >= STOP:
        time.sleep(120)
    return _decode(self, i)

_forward.Forward.__call__, _loader.DecodedImages.__getitem__ = forward, decode
"""
LINE = re.compile(r"^featx: stopped by (?P<signal>SIG\w+)(?: \(process (?P<rank>\d) of 2\))?: "
                  r"(?P<kept>[\d,]+) images embedded in this run are kept in (?P<where>.+); "
                  r"the next run resumes from them$", re.M)
NOTHING = re.compile(r"^featx: stopped by SIG\w+ before a batch was finished: "
                     r"no images embedded in this run are kept$", re.M)
MAIN = "\nimport sys\nfrom featx.cli import main\nsys.exit(main(sys.argv[1:]))\n"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A folder of 200 images and the store an uninterrupted run makes of it."""
    tmp = tmp_path_factory.mktemp("signals")
    data = make_folder(tmp / "data", {"a": IMAGES // 2, "b": IMAGES // 2})
    rc, out, err, _ = run_featx([*EXTRACT, "--data", str(data), "--cache", str(tmp / "reference")], tmp)
    assert rc == 0, err
    return tmp, data, out.splitlines()[-1]


def _run_and_signal(command: list[str], cwd: Path, gate: str, stop: int, signum: int, whole_group: bool,
                    ranks: int = 1) -> tuple[int, str, list[int]]:
    """Run ``command`` with the hook, send ``signum`` once every process holds at its gate
    (to the first process, or to its whole process group as a terminal or SLURM does);
    returns the exit status, stderr and each process's images through the network by then."""
    progress = cwd / "progress"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HOOK_PROGRESS": str(progress),
           "HOOK_STOP": str(stop), "HOOK_GATE": gate}
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(cwd.glob("progress.?"))) < ranks and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = [int(p.read_text()) for p in sorted(cwd.glob("progress.?"))]
    if proc.poll() is None:
        (os.killpg if whole_group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert len(seen) == ranks, err
    return proc.returncode, err, seen


def _featx(args: list[str]) -> list[str]:
    return [sys.executable, "-c", HOOK + MAIN, *args]


def _resumed(job, cache: Path, kept: int) -> None:
    """The next run embeds only what was not kept and writes the uninterrupted run's store."""
    tmp, data, reference = job
    rc, out, err, _ = run_featx([*EXTRACT, "--data", str(data), "--cache", str(cache)], tmp)
    assert rc == 0, err
    assert f"{IMAGES} images in the store: {IMAGES - kept} embedded" in err
    assert re.search(rf", {kept} reused, 0 skipped", err), err
    store_equal(out.splitlines()[-1], reference)


@pytest.mark.parametrize("whole_group", [False, True], ids=["to featx", "to its process group"])
def test_sigterm_keeps_the_batches_embedded_and_the_next_run_embeds_the_rest(job, tmp_path, whole_group):
    """Held in the network on the batch after 40 images: that batch is lost, the five
    before it are kept. Sent to the process alone (Kubernetes) or to its decoding
    processes too (SLURM), which then end without a word."""
    _, data, _ = job
    cache = tmp_path / "cache"
    command = _featx([*EXTRACT, "--data", str(data), "--cache", str(cache)])
    rc, err, (seen,) = _run_and_signal(command, tmp_path, "network", 40, signal.SIGTERM, whole_group)
    assert rc == 128 + signal.SIGTERM, err
    said = LINE.search(err)
    assert said and said["signal"] == "SIGTERM", err
    kept = int(said["kept"].replace(",", ""))
    assert kept == seen == 40 and Path(said["where"]).is_dir()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    _resumed(job, cache, kept)


def test_ctrl_c_while_waiting_for_images_keeps_the_batches_embedded(job, tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the decoding processes
    (held on image 48) end quietly, and the main process, waiting for them, commits the
    six batches it embedded."""
    _, data, _ = job
    cache = tmp_path / "cache"
    command = _featx([*EXTRACT, "--data", str(data), "--cache", str(cache)])
    rc, err, (seen,) = _run_and_signal(command, tmp_path, "decoding", 48, signal.SIGINT, whole_group=True)
    assert rc == 128 + signal.SIGINT, err
    said = LINE.search(err)
    assert said and said["signal"] == "SIGINT", err
    kept = int(said["kept"].replace(",", ""))
    assert kept == seen == 48
    assert "Traceback" not in err and "Exception ignored" not in err, err
    _resumed(job, cache, kept)


def test_a_signal_before_the_first_batch_is_done_says_that_nothing_is_kept(job, tmp_path):
    _, data, _ = job
    cache = tmp_path / "cache"
    command = _featx([*EXTRACT, "--data", str(data), "--cache", str(cache)])
    rc, err, (seen,) = _run_and_signal(command, tmp_path, "network", 0, signal.SIGTERM, whole_group=True)
    assert rc == 128 + signal.SIGTERM and seen == 0, err
    assert NOTHING.search(err) and not LINE.search(err), err
    assert "Traceback" not in err, err
    _resumed(job, cache, 0)


def test_under_torchrun_each_process_keeps_its_own_batches(job, tmp_path):
    """torchrun passes SIGTERM on to its processes; each commits what it embedded, says
    so, and stops without waiting for the other."""
    _, data, _ = job
    cache = tmp_path / "cache"
    script = tmp_path / "featx_hooked.py"
    script.write_text(HOOK + MAIN)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               str(script), *EXTRACT, "--data", str(data), "--cache", str(cache)]
    rc, err, seen = _run_and_signal(command, tmp_path, "network", 16, signal.SIGTERM, whole_group=False,
                                    ranks=2)
    assert rc != 0
    said = {m["rank"]: int(m["kept"].replace(",", "")) for m in LINE.finditer(err)}
    assert said == {"0": seen[0], "1": seen[1]} and seen == [16, 16], err
    _resumed(job, cache, sum(seen))


# ---- in the library: extract() handles the signals itself, and only while it runs ----

needs_default_sigterm = pytest.mark.skipif(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL,
                                           reason="this process's SIGTERM has a handler of its own")


def _signalled_at(monkeypatch, images: int, signum: int = signal.SIGTERM) -> None:
    """Send ``signum`` to this process from the network's forward pass on the batch after
    ``images`` images, provided featx, not the default action, will take it."""
    from featx.extraction.forward import Forward

    seen, sent, call = [0], [], Forward.__call__

    def forward(self, staged):
        if seen[0] == images and not sent:
            assert signal.getsignal(signum) is signals._handler
            sent.append(os.kill(os.getpid(), signum))
        out = call(self, staged)
        seen[0] += sum(len(s) for s in staged.slices)
        return out

    monkeypatch.setattr(Forward, "__call__", forward)


@needs_default_sigterm
def test_extract_called_from_python_commits_and_raises_interrupted(job, tmp_path, monkeypatch):
    from featx.extraction import extract

    _, data, _ = job
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    _signalled_at(monkeypatch, 3 * BATCH)
    with pytest.raises(Interrupted) as caught:
        extract(data, "pixels", tmp_path / "cache", batch_size=BATCH, workers=0, device="cpu",
                commit_rows=100000)
    exc = caught.value
    assert isinstance(exc, KeyboardInterrupt) and exc.signum == signal.SIGTERM
    assert exc.embedded == 3 * BATCH and exc.skipped == 0 and exc.kept_in.is_dir()
    assert str(exc).startswith(f"stopped by SIGTERM: {3 * BATCH} images embedded in this run are kept in ")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # restored
    monkeypatch.undo()
    again = extract(data, "pixels", tmp_path / "cache", batch_size=BATCH, workers=0, device="cpu")
    assert (again.embedded, again.reused) == (IMAGES - 3 * BATCH, 3 * BATCH)
    store_equal(again.path, job[2])


def test_a_handler_someone_else_set_is_left_alone(job, tmp_path, monkeypatch):
    from featx.backbones.backbone import Backbone
    from featx.extraction import extract

    def theirs(signum, frame):
        pass

    seen, forward = [], Backbone.embed

    def embed(self, x, model=None):
        seen.append(signal.getsignal(signal.SIGTERM))
        return forward(self, x, model)

    monkeypatch.setattr(Backbone, "embed", embed)
    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        extract(job[1], "pixels", tmp_path / "cache", batch_size=BATCH, workers=0, device="cpu")
        assert seen and all(h is theirs for h in seen) and signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_nothing_is_installed_on_import():
    import featx.api
    import featx.cli.commands
    import featx.extraction  # noqa: F401

    assert signals._handler not in (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))


@needs_default_sigterm
def test_a_signal_inside_held_is_raised_as_the_block_ends():
    order = []
    with pytest.raises(Interrupted) as caught, signals.stopping():
        with signals.held():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler has run by now: it noted the signal
                order.append(1)
        order.append("not reached")
    assert caught.value.signum == signal.SIGTERM and order == [1] * 100
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
