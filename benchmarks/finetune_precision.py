"""Training speed of one network in fp32 and in bfloat16 autocast, side by side in one
process: full fine-tuning (gradients through the network) and a frozen network with a
trained classifier (forward only through the network). This is what featx's ``auto``
training precision on the CPU rests on. Prints JSON.

    python benchmarks/finetune_precision.py [--backbone efficientnet_lite0] [--size 224] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from featx.backbones import load_backbone
from featx.core.devices import PRECISIONS, resolve_device
from featx.training import Settings
from featx.training.network import network as _network
from featx.training.network import optimizer as _optimizer
from featx.training.network import trainable as _trainable


def _images_per_second(net, opt, frozen, x, y, dtype, steps: int) -> float:
    times = []
    for _ in range(steps + 1):  # the first step warms up and is not counted
        net.train()
        for m in frozen:
            m.eval()
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return len(x) * steps / sum(times[1:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    dev = resolve_device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch,), device=dev)
    out = {"backbone": args.backbone, "image_size": args.size, "batch_size": args.batch, "device": dev.type,
           "threads": torch.get_num_threads()}
    for strategy in ("full", "head"):
        bb = load_backbone(args.backbone, image_size=args.size)
        net = _network(bb, 2)
        settings = Settings(strategy=strategy).check()
        groups, frozen = _trainable(net, bb.classifier, settings)
        net.to(dev, memory_format=torch.channels_last)
        opt = _optimizer(groups, settings)
        speeds = {name: _images_per_second(net, opt, frozen, x, y, PRECISIONS[name], args.steps)
                  for name in ("fp32", "bf16")}
        out[strategy] = {"fp32_images_per_second": round(speeds["fp32"], 2),
                         "bf16_images_per_second": round(speeds["bf16"], 2),
                         "bf16_over_fp32": round(speeds["bf16"] / speeds["fp32"], 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
