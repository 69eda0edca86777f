"""A fine-tune killed mid-epoch and resumed, against the same run uninterrupted, in one
job: ``featx finetune`` on hymenoptera (lp_ft, efficientnet_lite0) twice; the second is
SIGKILLed halfway through an epoch and rerun with --resume. Prints JSON: each run's
epochs, validation accuracies, chosen epoch and test accuracy.

    python benchmarks/finetune_resume.py [--epochs 4] [--kill-after-epoch 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _metrics(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    return {"epochs": [h["epoch"] for h in m["history"]],
            "val_accuracy": [round(h["val_accuracy"], 4) for h in m["history"]],
            "best_epoch": m["best_epoch"], "test_accuracy": m["test"]["test_accuracy"],
            "seconds": m["seconds"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tar", default=str(DATASETS / "hymenoptera.tar"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--kill-after-epoch", type=int, default=2,
                   help="kill halfway through the epoch after this one")
    p.add_argument("--out", default=None, help="folder for the two runs (default: a temporary one)")
    p.add_argument("--cache", default="cache")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="featx-resume-"))
    cmd = [sys.executable, "-m", "featx", "finetune", "--data", f"{args.tar}:hymenoptera/train",
           "--test", f"{args.tar}:hymenoptera/val", "--backbone", "efficientnet_lite0", "--epochs",
           str(args.epochs), "--patience", str(args.epochs), "--cache", args.cache]
    subprocess.run([*cmd, "--out", str(out / "whole")], check=True, stderr=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    whole = _metrics(out / "whole")
    epoch_seconds = json.loads((out / "whole" / "metrics.json").read_text())["history"][-1]["seconds"]

    killed = out / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], stderr=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    ckpt = killed / "last.pt"
    while proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= args.kill_after_epoch:
            break
        time.sleep(0.5)
    time.sleep(epoch_seconds / 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not ckpt.exists():
        raise SystemExit(f"{killed}: the run finished before it could be killed; try more --epochs")
    at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    subprocess.run([*cmd, "--out", str(killed), "--resume"], check=True, stderr=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    resumed = _metrics(killed)
    print(json.dumps({
        "killed_after_epoch": at_kill, "uninterrupted": whole, "resumed": resumed,
        "same_epochs": whole["epochs"] == resumed["epochs"],
        "test_accuracy_difference": round(resumed["test_accuracy"] - whole["test_accuracy"], 4),
    }, indent=2))


if __name__ == "__main__":
    main()
