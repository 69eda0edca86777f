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
that epoch's weights. ``DIR/model.pt`` holds those weights under the architecture's own
parameter names (the classifier included), so it loads as the backbone's ``weights``;
``DIR/model.pt.json`` records its SHA-256, classes and preprocessing. ``DIR/last.pt``,
written atomically after every epoch, lets an interrupted run resume; every file loads
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from . import __version__, distributed
from .augment import Labelled, collate
from .backbones import PIXELS, Backbone, load_backbone, sha256_file
from .errors import FeatxError
from .extract import PRECISIONS, default_workers, resolve_device, resolve_precision
from .files import write_bytes, write_lock
from .models import classification_metrics
from .sources import Item, KeysSource, Source, open_source
from .store import digest

STRATEGIES = ("lp_ft", "full", "last_k", "head")
FORMAT = 1
CHECKPOINT, MODEL, METRICS = "last.pt", "model.pt", "metrics.json"


class FinetuneError(FeatxError):
    """Settings, data or a run folder that a fine-tune cannot use."""


@dataclass(frozen=True)
class Settings:
    strategy: str = "lp_ft"
    pretrained: bool = True  # False: random initialisation, every stage trains (from scratch)
    epochs: int = 10
    batch_size: int = 32
    accumulate: int = 1  # batches per optimizer step: the effective batch is their product
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, Nesterov)
    lr: float | None = None  # the classifier's rate; default 1e-3 (AdamW) or 1e-2 (SGD), a tenth of that
    # for lp_ft, whose classifier starts fitted (Kumar et al. fine-tune with a small rate)
    backbone_lr: float = 0.1  # the top stage's rate as a share of the classifier's
    layer_decay: float = 0.8  # each earlier stage's rate as a share of the next one's
    weight_decay: float | None = None  # default 0.05 (AdamW) or 5e-4 (SGD)
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to zero
    patience: int = 3  # stop after this many epochs without a better validation accuracy
    last_k: int = 2  # stages trained by ``last_k``
    image_size: int | None = None  # default: the weights' resolution
    precision: str = "auto"
    val_fraction: float = 0.2  # carved out of train (stratified) when there is no val source
    seed: int = 0

    def check(self) -> Settings:
        if self.strategy not in STRATEGIES:
            raise FinetuneError(f"strategy {self.strategy!r}: choose {', '.join(STRATEGIES)}")
        if self.optimizer not in ("adamw", "sgd"):
            raise FinetuneError(f"optimizer {self.optimizer!r}: choose adamw or sgd")
        if self.precision not in ("auto", *PRECISIONS):
            raise FinetuneError(f"precision {self.precision!r}: choose auto, {', '.join(PRECISIONS)}")
        for name in ("epochs", "batch_size", "accumulate", "patience", "last_k"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise FinetuneError(f"val_fraction must lie between 0 and 1, got {self.val_fraction}")
        for name in ("lr", "backbone_lr", "layer_decay"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise FinetuneError(f"{name} must be positive, got {v}")
        for name in ("weight_decay", "warmup_epochs"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise FinetuneError(f"{name} must not be negative, got {v}")
        if self.image_size is not None and self.image_size < 8:
            raise FinetuneError(f"image_size {self.image_size}: too small (at least 8 pixels)")
        adamw = self.optimizer == "adamw"
        lr = (1e-3 if adamw else 1e-2) * (0.1 if self.pretrained and self.strategy == "lp_ft" else 1.0)
        return replace(self, lr=self.lr or lr,
                       weight_decay=self.weight_decay if self.weight_decay is not None else (0.05 if adamw else 5e-4))

    @property
    def method(self) -> str:
        return self.strategy if self.pretrained else "scratch"


@dataclass
class Split:
    """The images of one split, with labels indexing the training classes."""

    source: Source
    items: list[Item]
    labels: np.ndarray


@dataclass
class FinetuneResult:
    out: Path
    model: Path
    method: str  # the strategy, or "scratch"
    epochs_run: int
    best_epoch: int
    val_accuracy: float
    test: dict | None  # accuracy, balanced_accuracy, macro_f1, y_true, y_pred
    seconds: float  # wall time of the whole run (including the linear probe of lp_ft)
    train_seconds: float
    train_images_per_second: float
    n_train: int
    metrics: dict = field(repr=False, default_factory=dict)


# --- splits --------------------------------------------------------------------------------


def _labelled(source: Source, classes: list[str]) -> Split:
    """The labelled items of ``source`` with labels re-indexed into ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({source.classes[it.label] for it in source.items if it.label >= 0} - set(index))
    if unknown:
        raise FinetuneError(f"{source.spec}: classes not in the training data: {', '.join(unknown)}")
    items = [it for it in source.items if it.label >= 0]
    return Split(source, items, np.array([index[source.classes[it.label]] for it in items], dtype=np.int64))


def make_splits(train, val=None, test=None, *, val_fraction: float = 0.2, seed: int = 0):
    """Train, val and test splits from sources (or their command-line spellings).

    Without ``val``, a stratified ``val_fraction`` of ``train`` is held out with ``seed``
    (the rule the heads use)."""
    from .heads import validation_split

    train = train if isinstance(train, Source) else open_source(train)
    classes = list(train.classes)
    if len(classes) < 2:
        raise FinetuneError(f"{train.spec}: fine-tuning needs at least 2 classes, found {len(classes)}")
    tr = _labelled(train, classes)
    if val is None:
        cut = validation_split(tr.labels, val_fraction, seed)
        if cut is None:
            raise FinetuneError(f"{train.spec}: too few images per class to hold out a validation split")
        keys = [it.key for it in tr.items]
        val = KeysSource(train, [keys[i] for i in cut[1]], f"val{val_fraction:g}-seed{seed}")
        train = KeysSource(train, [keys[i] for i in cut[0]], f"train{1 - val_fraction:g}-seed{seed}")
        tr = _labelled(train, classes)
    va = _labelled(val if isinstance(val, Source) else open_source(val), classes)
    te = None if test is None else _labelled(test if isinstance(test, Source) else open_source(test), classes)
    for name, split in (("train", tr), ("val", va), ("test", te)):
        if split is not None and not split.items:
            raise FinetuneError(f"{split.source.spec}: the {name} split holds no labelled images")
    return tr, va, te, classes


# --- the network ---------------------------------------------------------------------------


def _under(name: str, prefix: str) -> bool:
    return bool(prefix) and (name == prefix or name.startswith(prefix + "."))


def stages(model: nn.Module, classifier: str) -> list[list[str]]:
    """The network's parameter names in stages, from the input to the classifier (which is
    left out). timm models say their own stages (``group_matcher``); otherwise the
    top-level children, with the container holding most of the network split into its
    children."""
    names = [n for n, _ in model.named_parameters() if not _under(n, classifier)]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        out = [[n for n in g if not _under(n, classifier)] for g in groups.values()]
        return [g for g in out if g]
    total = sum(p.numel() for n, p in model.named_parameters() if n in names)
    prefixes = []
    for child, module in model.named_children():
        size = sum(p.numel() for p in module.parameters())
        if not size or _under(child, classifier):
            continue
        parts = [f"{child}.{c}" for c, m in module.named_children() if any(True for _ in m.parameters())]
        split = isinstance(module, (nn.Sequential, nn.ModuleList)) and len(parts) >= 4 and size >= total / 2
        prefixes += parts if split else [child]
    groups = [[n for n in names if _under(n, pre)] for pre in prefixes]
    rest = [n for n in names if not any(_under(n, pre) for pre in prefixes)]
    return [g for g in groups if g] + ([rest] if rest else [])


def _network(backbone: Backbone, n_classes: int) -> nn.Module:
    """The backbone's network with a new linear classifier where its own one sat."""
    if backbone.name == PIXELS or not backbone.classifier:
        raise FinetuneError(f"{backbone.name}: has no network to fine-tune")
    net = backbone.model
    net.set_submodule(backbone.classifier, nn.Linear(backbone.embed_dim, n_classes))
    return net


def _trainable(net: nn.Module, classifier: str, settings: Settings) -> tuple[list[dict], list[nn.Module]]:
    """Optimizer parameter groups (each with its learning rate) and the modules that stay
    frozen (kept in eval mode, so their BatchNorm statistics and dropout do not change)."""
    lr = settings.lr
    groups = stages(net, classifier)
    params = dict(net.named_parameters())
    head = [params[n] for n in params if _under(n, classifier)]
    if not settings.pretrained:
        train_groups = groups
    elif settings.strategy == "head":
        train_groups = []
    elif settings.strategy == "last_k":
        train_groups = groups[-settings.last_k:]
    else:
        train_groups = groups
    opt_groups = [{"params": head, "lr": lr, "name": classifier}]
    for depth, g in enumerate(reversed(train_groups)):
        rate = lr if not settings.pretrained else lr * settings.backbone_lr * settings.layer_decay ** depth
        opt_groups.append({"params": [params[n] for n in g], "lr": rate, "name": g[0].rsplit(".", 1)[0]})
    trained = {id(p) for g in opt_groups for p in g["params"]}
    for p in net.parameters():
        p.requires_grad_(id(p) in trained)
    frozen = [m for m in net.modules()
              if any(True for _ in m.parameters()) and not any(p.requires_grad for p in m.parameters())]
    if settings.pretrained:  # BatchNorm keeps the pretrained statistics everywhere (see the module notes)
        frozen += [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return opt_groups, frozen


def _optimizer(opt_groups: list[dict], settings: Settings) -> torch.optim.Optimizer:
    groups = []
    for g in opt_groups:  # no weight decay on biases and normalisation weights
        decay = [p for p in g["params"] if p.ndim > 1]
        rest = [p for p in g["params"] if p.ndim <= 1]
        groups += [{"params": decay, "lr": g["lr"], "weight_decay": settings.weight_decay},
                   {"params": rest, "lr": g["lr"], "weight_decay": 0.0}]
    for g in groups:
        g["base_lr"] = g["lr"]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=settings.lr)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup + 1) / (total - warmup + 1)  # the first step after warm-up already decays
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def linear_probe_weights(model, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with ``x @ W.T + b`` equal to the decision values of featx's logreg
    pipeline (StandardScaler, row-span basis, LogisticRegression) on raw features x."""
    scaler, span, lr = model[0], model[1], model[-1]
    coef = lr.coef_ if span.basis_ is None else lr.coef_ @ span.basis_.T
    W = coef / scaler.scale_
    b = lr.intercept_ - W @ scaler.mean_
    if W.shape[0] == 1:  # binary: softmax([-z/2, z/2]) = sigmoid(z)
        W, b = np.vstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
    full_W = np.zeros((n_classes, W.shape[1]))
    full_b = np.full(n_classes, (b.min() - 10.0) if len(b) else 0.0)  # a class absent from train
    full_W[lr.classes_], full_b[lr.classes_] = W, b
    return full_W, full_b


def _frozen_features(split: Split, backbone: Backbone, cache_dir, extract_options: dict) -> tuple[np.ndarray, np.ndarray]:
    """Store features of a split's images (through the cache) and their labels; a split
    carved out of a source reads that source's store."""
    from . import store
    from .extract import extract

    src = split.source
    while isinstance(src, KeysSource):
        src = src.base
    X, _, keys, _ = store.load(extract(src, backbone, cache_dir, **extract_options).path)
    row = {k: i for i, k in enumerate(keys.tolist())}
    have = [i for i, it in enumerate(split.items) if it.key in row]
    return X[[row[split.items[i].key] for i in have]], split.labels[have]


def _linear_probe(tr: Split, va: Split, backbone: Backbone, n_classes: int, cache_dir, extract_options, settings):
    """LP-FT's starting classifier: logreg on frozen features, C chosen on the val split,
    fitted on the train split. Returns (W, b, details)."""
    from .heads import make_head

    Xt, yt = _frozen_features(tr, backbone, cache_dir, extract_options)
    Xv, yv = _frozen_features(va, backbone, cache_dir, extract_options)
    head = make_head("logreg", random_state=settings.seed)
    mask = np.r_[np.zeros(len(yt), bool), np.ones(len(yv), bool)]
    head.fit(np.concatenate([Xt, Xv]), np.concatenate([yt, yv]), val_mask=mask)
    model = head._build(**head.best_params_).fit(Xt, yt)
    W, b = linear_probe_weights(model, n_classes)
    return W, b, {"C": head.best_params_["C"], "val_accuracy": head.val_accuracy_}


# --- running -------------------------------------------------------------------------------


def training_precision(precision: str, device: torch.device, frozen_network: bool) -> str:
    """``auto``: bf16 (or fp16) on CUDA. On the CPU, bf16 autocast speeds up the forward
    pass but slows the backward one, so bf16 only when no gradient flows through the
    network (``head``), else fp32 (see benchmarks/finetune_precision.py)."""
    if precision != "auto":
        return resolve_precision(precision, device)
    if device.type == "cuda":
        return resolve_precision("auto", device)
    return resolve_precision("auto", device) if frozen_network else "fp32"


def _autocast(device: torch.device, prec: str):
    dtype = PRECISIONS[prec]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def evaluate(net: nn.Module, split: Split, pre, device, prec: str, batch_size: int, workers: int):
    """(labels, predictions, mean loss) of ``net`` on a split, with the eval transform."""
    net.eval()
    loader = DataLoader(Labelled(split.source, split.items, split.labels, pre), batch_size=batch_size,
                        collate_fn=collate, num_workers=min(workers, -(-len(split.items) // batch_size)))
    ys, preds, loss = [], [], 0.0
    with torch.inference_mode():
        for x, y, _ in loader:
            if x is None:
                continue
            x = pre.normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
            with _autocast(device, prec):
                logits = net(x).float()
            loss += float(nn.functional.cross_entropy(logits, y.to(device), reduction="sum"))
            ys.append(y.numpy())
            preds.append(logits.argmax(1).cpu().numpy())
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return y, (np.concatenate(preds) if preds else np.zeros(0, np.int64)), loss / max(1, len(y))


def _save_torch(obj, path: Path) -> None:
    # Serialised in memory first: torch.save reports a full disk only as an opaque
    # RuntimeError, a plain write as the OSError it is.
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getbuffer())


def _write_json(obj, path: Path) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint or model file, read with ``weights_only=True`` (no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FinetuneError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many types (code refused, torn file)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FinetuneError(f"{path}: not a loadable checkpoint ({first})") from None


def _run_digest(settings: Settings, backbone: Backbone, splits, classes) -> str:
    data = {name: digest([(it.key, it.stamp) for it in s.items]) + s.source.spec
            for name, s in splits.items() if s is not None}
    s = asdict(settings)
    return digest({"settings": s, "backbone": {k: v for k, v in backbone.identity().items() if k != "weights"},
                   "data": data, "classes": classes})


def finetune(
    train, backbone: str, out_dir: str | os.PathLike, *,
    val=None, test=None, settings: Settings = Settings(), weights: str | None = None,
    cache_dir: str | os.PathLike = "cache", extract_options: dict | None = None,
    device: str = "auto", workers: int | None = None, resume: bool = False,
    progress: bool = False, log=lambda message: None,
) -> FinetuneResult:
    """Fine-tune ``backbone`` (or train it from scratch) on ``train``; see the module notes.

    ``val`` and ``test`` are sources; without ``val`` a stratified share of ``train`` is
    held out. ``resume`` continues an interrupted run in ``out_dir``; a finished run with
    the same settings and data is returned without training again.
    """
    started = time.perf_counter()
    settings = settings.check()
    out = Path(out_dir)
    tr, va, te, classes = make_splits(train, val, test, val_fraction=settings.val_fraction, seed=settings.seed)
    dev = resolve_device(device)
    if dev.type == "cuda" and distributed.world().size > 1:  # under torchrun: this process's GPU
        dev = torch.device("cuda", distributed.world().local_rank)
    # Seeded draws (initial weights, dropout) must not move the caller's generators.
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(settings.seed)  # the classifier's (and, from scratch, the network's) initial weights
        bb = load_backbone(backbone, weights=weights, image_size=settings.image_size, pretrained=settings.pretrained)
        run_id = _run_digest(settings, bb, {"train": tr, "val": va, "test": te}, classes)
        out.mkdir(parents=True, exist_ok=True)
        busy = f"{out}: another featx process is training in this folder; wait for it to finish"
        with distributed.job_lock(lambda: write_lock(out / "run", busy, FinetuneError)):
            if distributed.world().is_main:
                for stale in out.glob(".*.tmp-*"):  # left by a run killed mid-write
                    stale.unlink(missing_ok=True)
            done = _finished(out, run_id, resume)
            if done is not None:
                log(f"{out}: this fine-tune is already done")
                return done
            return _train(bb, tr, va, te, classes, settings, run_id, out, dev, started, weights=weights,
                          cache_dir=cache_dir, extract_options=extract_options, workers=workers, resume=resume,
                          progress=progress, log=log)


def _train(bb: Backbone, tr: Split, va: Split, te: Split | None, classes, settings: Settings, run_id: str, out: Path,
           dev: torch.device, started: float, *, weights, cache_dir, extract_options, workers, resume, progress, log):
    """The training run itself, in a locked run folder (see :func:`finetune`)."""
    workers = default_workers() if workers is None else workers
    frozen_net = settings.pretrained and settings.strategy == "head"
    prec = training_precision(settings.precision, dev, frozen_net)
    eval_prec = resolve_precision("auto", dev)
    pre = bb.preprocessing
    net = _network(bb, len(classes))
    opt_groups, frozen = _trainable(net, bb.classifier, settings)

    state = _resume_state(out, run_id) if resume else None
    probe = None
    if state is None and settings.pretrained and settings.strategy == "lp_ft":
        log(f"{bb.name}: linear probe on frozen features (LP-FT's starting classifier)")
        feature_bb = load_backbone(bb.name, weights=weights, image_size=settings.image_size)
        W, b, probe = _linear_probe(tr, va, feature_bb, len(classes), cache_dir, extract_options or {}, settings)
        lin = net.get_submodule(bb.classifier)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
    net.to(dev, memory_format=torch.channels_last)
    optimizer = _optimizer(opt_groups, settings)
    scaler = torch.amp.GradScaler(dev.type, enabled=prec == "fp16")
    w = distributed.world()
    # Under torchrun each process trains on its share of every epoch (DistributedSampler)
    # and DistributedDataParallel averages the gradients; every process then scores the
    # whole validation split, so all agree on the best epoch; the first one writes.
    model = net if w.size == 1 else nn.parallel.DistributedDataParallel(
        net, device_ids=[dev.index] if dev.type == "cuda" else None)
    batches = math.ceil(math.ceil(len(tr.items) / w.size) / settings.batch_size)  # per process
    steps_per_epoch = math.ceil(batches / settings.accumulate)
    total_steps = steps_per_epoch * settings.epochs
    warmup = min(round(settings.warmup_epochs * steps_per_epoch), total_steps // 2)

    if state is None:
        state = {"epoch": 0, "step": 0, "history": [], "best_epoch": 0, "best_val": -1.0, "best_loss": math.inf,
                 "bad_epochs": 0,
                 "train_seconds": 0.0, "train_images": 0, "probe": probe, "prior_seconds": 0.0}
        if probe is not None:  # epoch 0, the linear probe, for the record (the heads report it as logreg)
            y, p, loss = evaluate(net, va, pre, dev, eval_prec, settings.batch_size, workers)
            state["history"].append({"epoch": 0, "val_accuracy": float(np.mean(y == p)), "val_loss": loss})
            log(f"{settings.method} epoch 0 (the linear probe): val accuracy {100 * float(np.mean(y == p)):.1f} %")
    else:
        net.load_state_dict(state.pop("model"))
        optimizer.load_state_dict(state.pop("optimizer"))
        scaler.load_state_dict(state.pop("scaler"))
        if state.pop("model_stale"):
            _save_model(net, out, bb, classes, settings, eval_prec, run_id, state["best_epoch"])
        log(f"{out}: resuming after epoch {state['epoch']} of {settings.epochs}")
    elapsed_before = state["prior_seconds"]

    from tqdm import tqdm

    while state["epoch"] < settings.epochs and state["bad_epochs"] < settings.patience:
        epoch = state["epoch"] + 1
        torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout: the same draws after a resume
        net.train()
        for m in frozen:
            m.eval()
        data = Labelled(tr.source, tr.items, tr.labels, pre, augment=True, seed=settings.seed, epoch=epoch)
        if w.size == 1:
            order = {"shuffle": True, "generator": torch.Generator().manual_seed(settings.seed * 100_003 + epoch)}
        else:
            sampler = DistributedSampler(data, w.size, w.rank, shuffle=True, seed=settings.seed * 100_003)
            sampler.set_epoch(epoch)
            order = {"sampler": sampler}
        loader = DataLoader(data, batch_size=settings.batch_size, collate_fn=collate, **order,
                            num_workers=min(workers, batches), pin_memory=dev.type == "cuda")
        bar = tqdm(total=len(loader.sampler), unit="img", desc=f"{settings.method} epoch {epoch}/{settings.epochs}",
                   disable=not progress, file=sys.stderr, leave=False)
        t0, seen, correct, loss_sum, lr = time.perf_counter(), 0, 0, 0.0, 0.0
        for i, (x, y, _) in enumerate(loader):
            # A batch none of whose images decode has nothing to train on. Under DDP every
            # process must then skip its batch too: the gradient all-reduce needs them all.
            if w.size > 1 and distributed.any_of(x is None):
                x, y = None, y[:0]
            if x is not None:
                x = pre.normalize(x.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last)
                y = y.to(dev)
                with _autocast(dev, prec):
                    logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
                group = min(settings.accumulate, batches - i // settings.accumulate * settings.accumulate)
                scaler.scale(loss / group).backward()  # the mean over the step's batches
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += float(loss.detach()) * len(y)
            if (i + 1) % settings.accumulate == 0 or i + 1 == len(loader):
                lr = lr_factor(state["step"], total_steps, warmup)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * lr
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
            bar.update(len(y))
        bar.close()
        seconds = time.perf_counter() - t0
        seen, correct, loss_sum = distributed.sum_all((seen, correct, loss_sum))  # over every process's share
        y_val, p_val, val_loss = evaluate(net, va, pre, dev, eval_prec, settings.batch_size, workers)
        val_acc = float(np.mean(y_val == p_val))
        state["train_seconds"] += seconds
        state["train_images"] += seen
        state["history"].append({
            "epoch": epoch, "train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
            "val_accuracy": val_acc, "val_loss": val_loss, "lr": settings.lr * lr, "train_images": seen,
            "seconds": round(seconds, 3),
            "train_images_per_second": round(seen / seconds, 2) if seconds else None,
        })
        # the best epoch: highest validation accuracy, ties broken by the lower validation loss
        improved = (val_acc, -val_loss) > (state["best_val"], -state["best_loss"])
        if improved:
            state.update(best_epoch=epoch, best_val=val_acc, best_loss=val_loss, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["prior_seconds"] = elapsed_before + time.perf_counter() - started
        # The checkpoint first: if the run dies before model.pt is replaced, the resume
        # rewrites model.pt from it (see _resume_state).
        if w.is_main:
            _save_torch({"format": FORMAT, "run": run_id, **state, "model": net.state_dict(),
                         "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, out / CHECKPOINT)
            if improved:
                _save_model(net, out, bb, classes, settings, eval_prec, run_id, epoch)
        distributed.barrier()
        log(f"{settings.method} epoch {epoch}/{settings.epochs}: train loss {state['history'][-1]['train_loss']:.3f}, "
            f"val accuracy {100 * val_acc:.1f} %{' (best)' if improved else ''}")

    net.load_state_dict(load_checkpoint(out / MODEL))
    test_metrics = None
    if te is not None:
        y_test, p_test, _ = evaluate(net, te, pre, dev, eval_prec, settings.batch_size, workers)
        test_metrics = {**classification_metrics(y_test, p_test), "y_true": y_test.tolist(), "y_pred": p_test.tolist()}
    seconds = elapsed_before + time.perf_counter() - started
    metrics = {
        "featx": __version__, "run": run_id, "finished": True, "method": settings.method,
        "settings": asdict(settings), "backbone": bb.identity(), "classes": classes,
        "precision": {"training": prec, "evaluation": eval_prec}, "device": dev.type,
        "n_train": len(tr.items), "n_val": len(va.items), "n_test": len(te.items) if te else 0,
        "val_keys": [it.key for it in va.items],  # the images that chose the epoch
        "processes": w.size,
        "effective_batch_size": settings.batch_size * settings.accumulate * w.size,
        "learning_rate": settings.lr,
        "epochs_run": state["epoch"], "stopped_early": state["epoch"] < settings.epochs,
        "best_epoch": state["best_epoch"], "val_accuracy": state["best_val"], "linear_probe": state["probe"],
        "history": state["history"], "test": test_metrics, "seconds": round(seconds, 2),
        "train_seconds": round(state["train_seconds"], 2),
        "train_images_per_second": round(state["train_images"] / state["train_seconds"], 2) if state["train_seconds"] else 0.0,
    }
    if w.is_main:
        _write_json(metrics, out / METRICS)
        _annotate_model(out, metrics)
        (out / CHECKPOINT).unlink(missing_ok=True)
    distributed.barrier()
    return _result(out, metrics)


def _save_model(net, out: Path, bb: Backbone, classes, settings: Settings, eval_prec: str, run_id: str, epoch: int):
    """model.pt (the epoch's weights, under the architecture's names) and its sidecar."""
    _save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / MODEL)
    _write_json({
        "sha256": sha256_file(out / MODEL), "kind": "finetuned", "format": FORMAT, "featx": __version__,
        "run": run_id, "epoch": epoch, "method": settings.method, "backbone": bb.name,
        "architecture": bb.architecture, "base_weights": bb.weights, "base_weights_sha256": bb.weights_sha256,
        "preprocessing": bb.preprocessing.to_dict(), "classifier": bb.classifier, "classes": list(classes),
        "precision": eval_prec,
    }, out / (MODEL + ".json"))


def _annotate_model(out: Path, metrics: dict) -> None:
    side = out / (MODEL + ".json")
    facts = json.loads(side.read_text())
    facts["metrics"] = {k: metrics[k] for k in ("val_accuracy", "best_epoch", "epochs_run", "n_train")}
    if metrics["test"]:
        facts["metrics"]["test_accuracy"] = metrics["test"]["test_accuracy"]
    _write_json(facts, side)


def _finished(out: Path, run_id: str, resume: bool) -> FinetuneResult | None:
    """A finished run with these settings, or None when there is work to do; refuses to
    overwrite another run's files or, without ``resume``, an interrupted one."""
    metrics_file, ckpt = out / METRICS, out / CHECKPOINT
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        if not isinstance(state, dict) or state.get("run") != run_id:
            raise FinetuneError(f"{ckpt}: an interrupted fine-tune with other settings or data; "
                                "choose another --out (or delete the folder)")
        if resume:
            return None
        raise FinetuneError(f"{out}: holds an interrupted fine-tune (epoch {state.get('epoch', '?')} done); "
                            "pass --resume to continue it, or choose another --out")
    if metrics_file.exists():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError):
            metrics = {}
        if metrics.get("run") == run_id and metrics.get("finished") and (out / MODEL).exists():
            return _result(out, metrics)
        raise FinetuneError(f"{out}: holds a fine-tune with other settings or data; choose another --out")
    return None


def _resume_state(out: Path, run_id: str) -> dict | None:
    ckpt = out / CHECKPOINT
    if not ckpt.exists():
        return None
    state = load_checkpoint(ckpt)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FinetuneError(f"{ckpt}: not a featx checkpoint")
    side = out / (MODEL + ".json")
    try:
        saved_epoch = json.loads(side.read_text()).get("epoch")
    except (OSError, ValueError):
        saved_epoch = None
    # Killed between the checkpoint and model.pt: the checkpoint's weights are the best.
    state["model_stale"] = saved_epoch != state["best_epoch"]
    if state["model_stale"] and state["best_epoch"] != state["epoch"]:
        raise FinetuneError(f"{out}: {MODEL} does not match {CHECKPOINT}; delete the folder and start again")
    return state


def _result(out: Path, m: dict) -> FinetuneResult:
    return FinetuneResult(out=out, model=out / MODEL, method=m["method"], epochs_run=m["epochs_run"],
                          best_epoch=m["best_epoch"], val_accuracy=m["val_accuracy"], test=m["test"],
                          seconds=m["seconds"], train_seconds=m["train_seconds"],
                          train_images_per_second=m["train_images_per_second"], n_train=m["n_train"], metrics=m)


# --- using a fine-tuned network ------------------------------------------------------------


class NetworkClassifier:
    """A fine-tuned network's own classifier, applied to its pooled features (what the
    store holds for ``model.pt``): softmax(x W^T + b)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight, self.bias = weight, bias
        self.classes_ = np.arange(len(bias))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = X.astype(np.float64) @ self.weight.T + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)


def is_model_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix == ".pt"


def load_model(path: str | os.PathLike) -> dict:
    """A prediction bundle (as :func:`featx.models.load` returns) for a fine-tuned
    ``model.pt``, after checking it against the SHA-256 in its sidecar."""
    from .models import ModelError
    from .store import DEFAULT_LAYER

    path = Path(path)
    side = path.with_name(path.name + ".json")
    try:
        facts = json.loads(side.read_text())
        expected = facts["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: no valid sidecar {side.name} recording its SHA-256; refusing to load it") from None
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if sha256_file(path) != expected:
        raise ModelError(f"{path}: SHA-256 does not match {side.name}; the file was altered, refusing to load it")
    sd = load_checkpoint(path)
    cls = facts["classifier"]
    try:
        weight, bias = sd[f"{cls}.weight"].float().numpy(), sd[f"{cls}.bias"].float().numpy()
    except KeyError:
        raise ModelError(f"{path}: holds no classifier {cls!r}") from None
    pre = facts["preprocessing"]
    return {
        "format": 1, "featx": facts.get("featx"), "head": f"finetuned ({facts['method']})",
        "model": NetworkClassifier(weight, bias),
        "backbone": {"name": facts["backbone"], "layers": [], "weights": str(path), "weights_sha256": expected,
                     "preprocessing": pre},
        "precision": facts["precision"], "layer": DEFAULT_LAYER, "classes": facts["classes"],
        "metrics": facts.get("metrics", {}), "weights_file": str(path),
    }

