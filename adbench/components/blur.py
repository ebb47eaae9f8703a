"""Gaussian smoothing of anomaly maps.

PatchCore, Reverse Distillation and the autoencoder all smooth their upsampled maps with a
Gaussian of sigma 4; one implementation keeps them identical. Kernel size follows the common
``2 * ceil(4 * sigma) + 1`` rule (truncate at 4 sigma), with reflect padding so borders are not
darkened.
"""
from __future__ import annotations

import math

import torch


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Blur [B, H, W] or [B, 1, H, W] maps; returns the same shape. sigma <= 0 is a no-op."""
    if sigma <= 0:
        return maps
    from kornia.filters import gaussian_blur2d

    squeeze = maps.dim() == 3
    x = maps.unsqueeze(1) if squeeze else maps
    size = 2 * math.ceil(4 * sigma) + 1
    size = min(size, 2 * (min(x.shape[-2:]) // 2) - 1) if min(x.shape[-2:]) <= size else size
    out = gaussian_blur2d(x.float(), (size, size), (float(sigma), float(sigma)), border_type="reflect")
    return out.squeeze(1) if squeeze else out
