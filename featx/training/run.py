"""Training the network itself: fine-tuning a pretrained backbone, or the same
architecture from random initialisation, on the same data and splits as the heads.

Strategies (``Settings.strategy``):

- ``head``: only a new linear classifier trains; the network is frozen (a linear probe
  trained by gradient, with augmentation);
- ``last_k``: the last ``k`` stages and the classifier train; the rest stays frozen,
  BatchNorm statistics included;
- ``full``: everything trains, earlier stages at lower learning rates (each stage's rate
  is ``layer_decay`` times the next one's, the top stage's ``backbone_lr`` times the
  classifier's);
- ``lp_ft`` (default): as ``full``, but the classifier starts from the logistic regression
  fitted on the frozen features (LP-FT, Kumar et al. 2022), its C chosen on the
  validation split.

``pretrained=False`` trains the architecture from random initialisation, every stage
at the classifier's learning rate: the from-scratch baseline.

A pretrained network's BatchNorm layers keep their statistics (they run in inference
mode; their scale and shift still train), as Keras's transfer-learning guide advises:
statistics of small, augmented batches replace the pretrained ones and cost accuracy
(efficientnet_lite0 on hymenoptera: 93.9 % validation accuracy before fine-tuning,
85.7 % after one epoch with batch statistics, 89.8-93.9 % with the pretrained ones).
From scratch, BatchNorm learns its statistics as usual.

The best epoch is chosen on the validation split; the test split is scored once, with
that epoch's weights. What the run folder holds: :mod:`.state`; the loop: :mod:`.loop`.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ..backbones import load_backbone
from ..core import distributed
from ..core.devices import resolve_device
from ..core.files import write_lock
from .loop import Trainer
from .probe import linear_probe
from .settings import FinetuneError, Settings
from .splits import make_splits
from .state import FinetuneResult, finished, resume_state, run_digest

log = logging.getLogger(__name__)


def finetune(
    train, backbone: str, out_dir: str | os.PathLike, *,
    val=None, test=None, settings: Settings = Settings(), weights: str | None = None,
    cache_dir: str | os.PathLike = "cache", extract_options: dict | None = None,
    device: str = "auto", workers: int | None = None, resume: bool = False,
) -> FinetuneResult:
    """Fine-tune ``backbone`` (or train it from scratch) on ``train``; see the module notes.

    ``val`` and ``test`` are sources; without ``val`` a stratified share of ``train`` is
    held out. ``resume`` continues an interrupted run in ``out_dir``; a finished run with
    the same settings and data is returned without training again.
    """
    started = time.perf_counter()
    settings = settings.check()
    out = Path(out_dir)
    splits = make_splits(train, val, test, val_fraction=settings.val_fraction, seed=settings.seed)
    dev = resolve_device(device)
    if dev.type == "cuda" and distributed.world().size > 1:  # under torchrun: this process's GPU
        dev = torch.device("cuda", distributed.world().local_rank)
    # Seeded draws (initial weights, dropout) must not move the caller's generators.
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        # the classifier's (and, from scratch, the network's) initial weights
        torch.manual_seed(settings.seed)
        bb = load_backbone(backbone, weights=weights, image_size=settings.image_size,
                           pretrained=settings.pretrained)
        run_id = run_digest(settings, bb, splits)
        out.mkdir(parents=True, exist_ok=True)
        busy = f"{out}: another featx process is training in this folder; wait for it to finish"
        with distributed.job_lock(lambda: write_lock(out / "run", busy, FinetuneError)):
            if distributed.world().is_main:
                for stale in out.glob(".*.tmp-*"):  # left by a run killed mid-write
                    stale.unlink(missing_ok=True)
            done = finished(out, run_id, resume)
            if done is not None:
                log.info("%s: this fine-tune is already done", out)
                return done
            trainer = Trainer(bb, splits, settings, run_id=run_id, out=out, device=dev, workers=workers)

            def probe():
                features = load_backbone(bb.name, weights=weights, image_size=settings.image_size)
                return linear_probe(splits.train, splits.val, features, len(splits.classes),
                                    cache_dir=cache_dir, extract_options=extract_options or {},
                                    settings=settings)

            return trainer.run(resume_state(out) if resume else None, probe, started)
