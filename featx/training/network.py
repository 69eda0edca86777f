"""The network being trained: its stages, what trains and at which rate, the optimizer
and the learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..backbones import PIXELS, Backbone
from .settings import FinetuneError, Settings


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


def network(backbone: Backbone, n_classes: int) -> nn.Module:
    """The backbone's network with a new linear classifier where its own one sat."""
    if backbone.name == PIXELS or not backbone.classifier:
        raise FinetuneError(f"{backbone.name}: has no network to fine-tune")
    net = backbone.model
    net.set_submodule(backbone.classifier, nn.Linear(backbone.embed_dim, n_classes))
    return net


def trainable(net: nn.Module, classifier: str, settings: Settings) -> tuple[list[dict], list[nn.Module]]:
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


def optimizer(opt_groups: list[dict], settings: Settings) -> torch.optim.Optimizer:
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
