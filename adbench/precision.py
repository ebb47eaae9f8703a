"""Numeric precision of a job's neural networks: ``--precision fp32|tf32|bf16``.

* ``fp32`` (default): what the papers ran. On CUDA, TF32 is switched off for matmuls *and*
  convolutions (PyTorch leaves it on for cuDNN convolutions by default), so fp32 means fp32.
* ``tf32``: float32 tensors, TF32 tensor-core matmuls and convolutions on Ampere and later GPUs
  (``torch.backends.*.allow_tf32``); on a CPU it changes nothing, and the record says so.
* ``bf16``: networks run under ``torch.autocast(dtype=torch.bfloat16)``; weights, optimiser
  state and gradients stay float32 (bf16 has float32's range, so no loss scaling is needed).

Only the networks run under autocast: each method wraps its forward passes in
``context.autocast()`` and casts their outputs back to float32 (``full``) before anything
that needs full precision: losses (SSIM windows, focal loss, FastFlow's log-likelihood and
log-determinants), statistics (Gaussians, covariances, coresets, nearest neighbours) and maps.
cudnn.benchmark is on for CUDA jobs (fixed input sizes: it picks the fastest convolution
algorithm once per shape). channels_last is not used yet (not measured on a GPU here).

Precision is part of a job's identity (``Job.precision``: key, record name and checkpoint), so
a bf16 run after an fp32 one is a new job; fp32 jobs keep the names they had before the option
existed, since that is what every earlier job ran.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


def check(precision: str) -> str:
    from adbench.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def configure_backends(precision: str, device: torch.device) -> dict[str, Any]:
    """Set the process-wide flags for ``precision`` on ``device``; returns what the record states."""
    cuda = device.type == "cuda"
    tf32 = precision == "tf32" and cuda
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    return {"precision": precision, "autocast": "bfloat16" if precision == "bf16" else None, "tf32": tf32,
            "cudnn_benchmark": cuda, "channels_last": False}


def autocast(precision: str, device: torch.device):
    """The context the networks' forward passes run in (a no-op for fp32 and tf32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def full(value):
    """Network outputs in bf16/fp16 back to float32 (tensors, and lists/tuples of them); float32
    and float64 pass unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(full(v) for v in value)
    return value


def channels_last(owner: Any) -> int:
    """Put every network an object holds (its ``nn.Module`` attributes, and those of objects
    it holds one level down, such as a trainer) in channels_last memory format; returns how
    many modules were converted. cuDNN's bf16 tensor-core convolutions prefer NHWC; whether it
    pays on a given method is measured by ``benchmarks/gpu_steps.py`` (``bf16+cl``) before any
    profile turns it on."""
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> int:
        count = 0
        for value in list(vars(obj).values()) if hasattr(obj, "__dict__") else []:
            if isinstance(value, torch.nn.Module) and id(value) not in seen:
                seen.add(id(value))
                value.to(memory_format=torch.channels_last)
                count += 1
            elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (torch.Tensor, type)):
                count += visit(value, depth - 1)
        return count

    return visit(owner, 1)
