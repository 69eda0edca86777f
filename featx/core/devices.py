"""Devices and numeric precisions: what ``auto`` means on this machine."""
from __future__ import annotations

import contextlib

import torch

from .errors import ParameterError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ParameterError("device", device, "choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", device, "no CUDA device is available (choose cpu)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bfloat16 where the hardware runs it natively (not emulated), else fp16
    on CUDA and fp32 on the CPU: the fastest precision whose linear-probe accuracy stays
    within 0.3 points of fp32's (benchmarks/precision_fidelity.py; RESULTS.md)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return "bf16" if native_bf16() else "fp32"
    if precision not in PRECISIONS:
        raise ParameterError("precision", precision, "choose auto, fp32, bf16 or fp16")
    return precision


def native_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512-BF16 or AMX), not emulated."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, precision: str):
    """Autocast to ``precision`` on ``device``; a no-op for fp32."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
