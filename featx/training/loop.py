"""The training run in a locked folder: epochs of augmented batches, each followed by a
score on the validation split and a checkpoint; the best epoch scored once on test.

Under ``torchrun`` each process trains on its share of every epoch (DistributedSampler)
and DistributedDataParallel averages the gradients; every process then scores the whole
validation split, so all agree on the best epoch; the first one writes the files.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..backbones import Backbone
from ..core import distributed, progress
from ..core.devices import autocast, resolve_precision
from ..core.torchio import write_json
from ..core.version import __version__
from ..core.workers import start_method
from ..data.augment import Labelled, collate
from ..extraction.loader import default_workers
from ..heads.metrics import classification_metrics
from . import state as files
from .network import lr_factor, network, optimizer, trainable
from .settings import Settings, training_precision
from .splits import Split, Splits
from .state import FinetuneResult, TrainState

log = logging.getLogger(__name__)


def evaluate(net: nn.Module, split: Split, pre, device, *, precision: str, batch_size: int, workers: int):
    """(labels, predictions, mean loss) of ``net`` on a split, with the eval transform."""
    net.eval()
    workers = min(workers, -(-len(split.items) // batch_size))
    loader = DataLoader(Labelled(split.source, split.items, split.labels, pre), batch_size=batch_size,
                        collate_fn=collate, num_workers=workers,
                        multiprocessing_context=start_method(workers))
    ys, preds, loss = [], [], 0.0
    with torch.inference_mode():
        for x, y, _ in loader:
            if x is None:
                continue
            x = pre.normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = net(x).float()
            loss += float(nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
            ys.append(y.numpy())
            preds.append(logits.argmax(1).cpu().numpy())
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return y, (np.concatenate(preds) if preds else np.zeros(0, np.int64)), loss / max(1, len(y))


class Trainer:
    """One run: the network with its new classifier, what trains, and the schedule."""

    def __init__(self, bb: Backbone, splits: Splits, settings: Settings, *, run_id: str, out: Path,
                 device: torch.device, workers: int | None):
        self.bb, self.splits, self.settings = bb, splits, settings
        self.run_id, self.out, self.dev = run_id, out, device
        self.workers = default_workers() if workers is None else workers
        self.prec = training_precision(settings.precision, device,
                                       settings.pretrained and settings.strategy == "head")
        self.eval_prec = resolve_precision("auto", device)
        self.world = distributed.world()
        self.net = network(bb, len(splits.classes))
        self.groups, self.frozen = trainable(self.net, bb.classifier, settings)

    def run(self, resumed: tuple[TrainState, dict, bool] | None, probe, started: float) -> FinetuneResult:
        """Train from the start (LP-FT first fits ``probe()``: W, b, details) or from
        where an interrupted run stopped; score the best epoch on test."""
        details = None
        if resumed is None and self.settings.pretrained and self.settings.strategy == "lp_ft":
            log.info("%s: linear probe on frozen features (LP-FT's starting classifier)", self.bb.name)
            W, b, details = probe()
            lin = self.net.get_submodule(self.bb.classifier)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
        self._prepare()
        state = self._first_state(details) if resumed is None else self._resume(*resumed)
        elapsed_before = state.prior_seconds
        while state.epoch < self.settings.epochs and state.bad_epochs < self.settings.patience:
            self._epoch(state, elapsed_before, started)
        return self._finish(state, elapsed_before, started)

    def _prepare(self) -> None:
        s, w = self.settings, self.world
        self.net.to(self.dev, memory_format=torch.channels_last)
        self.optimizer = optimizer(self.groups, s)
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=self.prec == "fp16")
        self.model = self.net if w.size == 1 else nn.parallel.DistributedDataParallel(
            self.net, device_ids=[self.dev.index] if self.dev.type == "cuda" else None)
        share = math.ceil(len(self.splits.train.items) / w.size)  # each process's images
        self.batches = math.ceil(share / s.batch_size)
        steps_per_epoch = math.ceil(self.batches / s.accumulate)
        self.total_steps = steps_per_epoch * s.epochs
        self.warmup = min(round(s.warmup_epochs * steps_per_epoch), self.total_steps // 2)

    def _evaluate(self, split: Split):
        return evaluate(self.net, split, self.bb.preprocessing, self.dev, precision=self.eval_prec,
                        batch_size=self.settings.batch_size, workers=self.workers)

    def _first_state(self, probe: dict | None) -> TrainState:
        state = TrainState(probe=probe)
        if probe is not None:  # epoch 0, the linear probe, for the record (the heads report it as logreg)
            y, p, loss = self._evaluate(self.splits.val)
            state.history.append({"epoch": 0, "val_accuracy": float(np.mean(y == p)), "val_loss": loss})
            log.info("%s epoch 0 (the linear probe): val accuracy %.1f %%", self.settings.method,
                     100 * float(np.mean(y == p)))
        return state

    def _resume(self, state: TrainState, saved: dict, stale: bool) -> TrainState:
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        if stale:
            self._save_model(state.best_epoch)
        log.info("%s: resuming after epoch %d of %d", self.out, state.epoch, self.settings.epochs)
        return state

    def _save_model(self, epoch: int) -> None:
        files.save_model(self.net, self.out, self.bb, classes=self.splits.classes, settings=self.settings,
                         precision=self.eval_prec, run_id=self.run_id, epoch=epoch)

    def _loader(self, epoch: int) -> DataLoader:
        s, w, tr = self.settings, self.world, self.splits.train
        data = Labelled(tr.source, tr.items, tr.labels, self.bb.preprocessing, augment=True, seed=s.seed,
                        epoch=epoch)
        if w.size == 1:
            order = {"shuffle": True, "generator": torch.Generator().manual_seed(s.seed * 100_003 + epoch)}
        else:
            sampler = DistributedSampler(data, w.size, w.rank, shuffle=True, seed=s.seed * 100_003)
            sampler.set_epoch(epoch)
            order = {"sampler": sampler}
        workers = min(self.workers, self.batches)
        return DataLoader(data, batch_size=s.batch_size, collate_fn=collate, **order, num_workers=workers,
                          multiprocessing_context=start_method(workers), pin_memory=self.dev.type == "cuda")

    def _train_epoch(self, state: TrainState, epoch: int) -> dict:
        """One pass over this process's share of train; the epoch's totals."""
        s, dev, pre = self.settings, self.dev, self.bb.preprocessing
        torch.manual_seed(s.seed * 100_003 + epoch)  # dropout: the same draws after a resume
        self.net.train()
        for m in self.frozen:
            m.eval()
        loader = self._loader(epoch)
        bar = progress.bar(len(loader.sampler), f"{s.method} epoch {epoch}/{s.epochs}", transient=True)
        t0, seen, correct, loss_sum, lr = time.perf_counter(), 0, 0, 0.0, 0.0
        for i, (x, y, _) in enumerate(loader):
            # A batch none of whose images decode has nothing to train on. Under DDP every
            # process must then skip its batch too: the gradient all-reduce needs them all.
            if self.world.size > 1 and distributed.any_of(x is None):
                x, y = None, y[:0]
            if x is not None:
                x = pre.normalize(x.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last)
                y = y.to(dev)
                with autocast(dev, self.prec):
                    logits = self.model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
                group = min(s.accumulate, self.batches - i // s.accumulate * s.accumulate)
                self.scaler.scale(loss / group).backward()  # the mean over the step's batches
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += float(loss.detach()) * len(y)
            if (i + 1) % s.accumulate == 0 or i + 1 == len(loader):
                lr = self._step(state)
            bar.update(len(y))
        bar.close()
        seconds = time.perf_counter() - t0
        seen, correct, loss_sum = distributed.sum_all((seen, correct, loss_sum))  # over every process's share
        return {"seen": seen, "correct": correct, "loss_sum": loss_sum, "lr": lr, "seconds": seconds}

    def _step(self, state: TrainState) -> float:
        """One optimizer step at the schedule's rate; returns the rate's factor."""
        lr = lr_factor(state.step, self.total_steps, self.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return lr

    def _epoch(self, state: TrainState, elapsed_before: float, started: float) -> None:
        epoch = state.epoch + 1
        t = self._train_epoch(state, epoch)
        y_val, p_val, val_loss = self._evaluate(self.splits.val)
        val_acc = float(np.mean(y_val == p_val))
        seen, seconds = t["seen"], t["seconds"]
        state.train_seconds += seconds
        state.train_images += seen
        state.history.append({
            "epoch": epoch, "train_loss": t["loss_sum"] / max(1, seen),
            "train_accuracy": t["correct"] / max(1, seen),
            "val_accuracy": val_acc, "val_loss": val_loss, "lr": self.settings.lr * t["lr"],
            "train_images": seen, "seconds": round(seconds, 3),
            "train_images_per_second": round(seen / seconds, 2) if seconds else None,
        })
        # the best epoch: highest validation accuracy, ties broken by the lower validation loss
        improved = (val_acc, -val_loss) > (state.best_val, -state.best_loss)
        if improved:
            state.best_epoch, state.best_val, state.best_loss, state.bad_epochs = epoch, val_acc, val_loss, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.prior_seconds = elapsed_before + time.perf_counter() - started
        # The checkpoint first: if the run dies before model.pt is replaced, the resume
        # rewrites model.pt from it (see featx.training.state.resume_state).
        if self.world.is_main:
            files.save_checkpoint(self.out, state, self.run_id, self.net, self.optimizer, self.scaler)
            if improved:
                self._save_model(epoch)
        distributed.barrier()
        log.info("%s epoch %d/%d: train loss %.3f, val accuracy %.1f %%%s", self.settings.method, epoch,
                 self.settings.epochs, state.history[-1]["train_loss"], 100 * val_acc,
                 " (best)" if improved else "")

    def _finish(self, state: TrainState, elapsed_before: float, started: float) -> FinetuneResult:
        self.net.load_state_dict(files.load_checkpoint(self.out / files.MODEL))
        test = None
        if self.splits.test is not None:
            y_test, p_test, _ = self._evaluate(self.splits.test)
            test = {**classification_metrics(y_test, p_test), "y_true": y_test.tolist(),
                    "y_pred": p_test.tolist()}
        metrics = self._metrics(state, test, elapsed_before + time.perf_counter() - started)
        if self.world.is_main:
            write_json(metrics, self.out / files.METRICS)
            files.annotate_model(self.out, metrics)
            (self.out / files.CHECKPOINT).unlink(missing_ok=True)
        distributed.barrier()
        return FinetuneResult.from_metrics(self.out, metrics)

    def _metrics(self, state: TrainState, test: dict | None, seconds: float) -> dict:
        s, sp, w = self.settings, self.splits, self.world
        speed = round(state.train_images / state.train_seconds, 2) if state.train_seconds else 0.0
        return {
            "featx": __version__, "run": self.run_id, "finished": True, "method": s.method,
            "settings": asdict(s), "backbone": self.bb.identity(), "classes": sp.classes,
            "precision": {"training": self.prec, "evaluation": self.eval_prec}, "device": self.dev.type,
            "n_train": len(sp.train.items), "n_val": len(sp.val.items),
            "n_test": len(sp.test.items) if sp.test else 0,
            "val_keys": [it.key for it in sp.val.items],  # the images that chose the epoch
            "processes": w.size,
            "effective_batch_size": s.batch_size * s.accumulate * w.size,
            "learning_rate": s.lr,
            "epochs_run": state.epoch, "stopped_early": state.epoch < s.epochs,
            "best_epoch": state.best_epoch, "val_accuracy": state.best_val, "linear_probe": state.probe,
            "history": state.history, "test": test, "seconds": round(seconds, 2),
            "train_seconds": round(state.train_seconds, 2),
            "train_images_per_second": speed,
        }
