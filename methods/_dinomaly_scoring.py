"""Dinomaly's loss and its anomaly map (official code github.com/guojiajeremy/Dinomaly at
``c5c76d0``, ``utils.py``, cited as file:line).

**Loss: global cosine with hard-point mining** (``global_cosine_hm_percent``, l.70-89). For each
encoder/decoder group pair, the cosine distance between the *whole* flattened feature maps of
each image (one vector per image: "global", loose reconstruction), averaged over the batch and
then over the groups. Hard mining does not change the value; it changes the gradient: the points
(image, row, column) whose own per-point cosine distance lies below the ``1 - p`` quantile of the
batch (the easy, well reconstructed ones; threshold = the ``int(n (1 - p))``-th largest distance)
have the gradient flowing into the decoder's group multiplied by ``factor`` (0.1;
``modify_grad``, l.24-27, hooked on the decoder group). ``p`` ramps linearly from 0 to 0.9 over
the first 1000 iterations (``dinomaly_mvtec_uni.py``:180-181). The encoder side is detached.

**Map** (``cal_anomaly_maps`` l.210-223 and ``evaluation_batch`` l.347-390, called with
``max_ratio=0.01, resize_mask=256``): per group ``1 - cos`` over channels at every grid point,
resized bilinearly (``align_corners=True``) to the input size, averaged over the groups; resized
bilinearly (``align_corners=False``) to 256 x 256 and convolved with a 5 x 5 Gaussian of sigma 4
with zero padding (``get_gaussian_kernel``, l.701-733). Image score: the mean of the largest 1 %
of that 256 x 256 map's pixels (655 values).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def hard_mining_cosine_loss(encoder: list[torch.Tensor], decoder: list[torch.Tensor], *, p: float,
                            factor: float) -> torch.Tensor:
    """Global cosine loss over the group pairs, with the easy points' decoder gradient scaled by
    ``factor`` (module docstring). ``encoder``/``decoder``: ``[B, C, gh, gw]`` maps."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"hard-mining fraction p={p} must lie in [0, 1)")
    total = 0.0
    for target, rebuilt in zip(encoder, decoder):
        target = target.detach()
        with torch.no_grad():
            points = 1.0 - F.cosine_similarity(target, rebuilt, dim=1).unsqueeze(1)  # [B, 1, gh, gw]
            k = max(1, int(points.numel() * (1.0 - p)))
            threshold = torch.topk(points.flatten(), k=k).values[-1]
            easy = points < threshold
        total = total + torch.mean(1.0 - F.cosine_similarity(target.flatten(1), rebuilt.flatten(1), dim=1))
        if rebuilt.requires_grad:
            rebuilt.register_hook(_scale_where(easy, factor))
    return total / len(encoder)


def _scale_where(mask: torch.Tensor, factor: float):
    """A gradient hook multiplying the gradient by ``factor`` where ``mask`` holds (broadcast
    over channels), as ``modify_grad`` does in place."""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.expand_as(grad), grad * factor, grad)
    return hook


def hard_mining_fraction(iteration: int, *, final: float = 0.9, ramp_iterations: int = 1000) -> float:
    """``p = min(final * it / ramp, final)`` (``dinomaly_mvtec_uni.py``:180-181)."""
    if ramp_iterations <= 0:
        return float(final)
    return min(final * iteration / ramp_iterations, final)


def cosine_map(encoder: list[torch.Tensor], decoder: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """``cal_anomaly_maps``: the mean over groups of ``1 - cos``, each resized bilinearly with
    ``align_corners=True`` to ``size``: ``[B, 1, H, W]``."""
    maps = [F.interpolate(1.0 - F.cosine_similarity(e, d, dim=1).unsqueeze(1), size=size, mode="bilinear",
                          align_corners=True) for e, d in zip(encoder, decoder)]
    return torch.cat(maps, dim=1).mean(dim=1, keepdim=True)


def gaussian_kernel(size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """``get_gaussian_kernel``: a normalised ``size`` x ``size`` Gaussian, ``[1, 1, size, size]``,
    computed in float32 in the official order (so the kernel is the official one to the last bit)."""
    coords = torch.arange(size, dtype=torch.float32)
    centre, variance = (size - 1) / 2.0, float(sigma) ** 2
    squared = (coords.view(-1, 1) - centre) ** 2 + (coords.view(1, -1) - centre) ** 2
    kernel = (1.0 / (2.0 * math.pi * variance)) * torch.exp(-squared / (2 * variance))
    return (kernel / torch.sum(kernel)).view(1, 1, size, size)


def evaluation_map(raw: torch.Tensor, *, map_size: int = 256, kernel_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """The map the official evaluation scores: bilinear (``align_corners=False``) to
    ``map_size``, then the zero-padded Gaussian convolution. ``[B, 1, map_size, map_size]``."""
    resized = F.interpolate(raw, size=(map_size, map_size), mode="bilinear", align_corners=False)
    if kernel_size <= 1 or sigma <= 0:
        return resized
    kernel = gaussian_kernel(kernel_size, sigma).to(resized.device, resized.dtype)
    return F.conv2d(resized, kernel, padding=kernel_size // 2)


def top_fraction_mean(maps: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Per image, the mean of the ``int(fraction * pixels)`` largest values (at least one)."""
    flat = maps.flatten(1)
    k = max(1, int(flat.shape[1] * fraction))
    return torch.topk(flat, k=k, dim=1).values.mean(dim=1)
