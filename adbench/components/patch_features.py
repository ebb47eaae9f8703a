"""PatchCore's locally aware patch features (Roth et al., 2022, Sec. 3.1; official code).

For each chosen backbone layer, every position is described by its 3x3 neighbourhood
(``unfold`` with zero padding 1, stride 1, so the grid size is kept): a vector of C*9 values in
(channel, dy, dx) order. Deeper layers are brought to the grid of the first (finest) layer by
bilinear interpolation of those neighbourhood vectors. Each layer's vector is reduced to
``pretrain_dim`` (1024) by 1-D adaptive average pooling over its C*9 values, the layer vectors
are concatenated and pooled once more to ``target_dim`` (1024). The official code does exactly
this with ``F.adaptive_avg_pool1d``.

Implementation note: adaptive average pooling is linear, so the two poolings of layer l collapse
into one fixed matrix ``W_l`` ([C_l*9, target_dim]) built by pooling an identity matrix. The
embedding is then ``sum_l upsample(unfold(f_l) @ W_l)``; projecting before upsampling is exact
(interpolation acts on positions, the projection on channels) and makes the deep layer's
upsampling 9x cheaper for ResNet-sized layers. The output equals the official two-step pooling
to float precision (checked in tests/test_patchcore.py).

ToCoAD's inference stage reuses this aggregator on its fine-tuned backbone.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def adaptive_pool_matrix(length: int, out: int) -> torch.Tensor:
    """Matrix P [length, out] with ``x @ P == adaptive_avg_pool1d(x, out)`` for x of ``length``."""
    eye = torch.eye(length, dtype=torch.float64).unsqueeze(1)  # [length, 1, length]
    return F.adaptive_avg_pool1d(eye, out).squeeze(1).to(torch.float32)  # [length, out]


class PatchAggregator(nn.Module):
    """Feature maps of several layers -> one ``target_dim`` embedding per position.

    ``channels``: channels of each layer (finest first, as the backbone returns them).
    ``forward(maps)`` returns [B, target_dim, H0, W0] with (H0, W0) the first layer's grid.
    """

    def __init__(
        self,
        channels: Sequence[int],
        *,
        pretrain_dim: int = 1024,
        target_dim: int = 1024,
        patch_size: int = 3,
    ):
        super().__init__()
        if patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd, got {patch_size}")
        self.channels = list(channels)
        self.patch_size = int(patch_size)
        self.pretrain_dim = int(pretrain_dim)
        self.target_dim = int(target_dim)
        n = len(self.channels)
        agg = adaptive_pool_matrix(n * self.pretrain_dim, self.target_dim)  # [n*P, T]
        for i, c in enumerate(self.channels):
            per_layer = adaptive_pool_matrix(c * self.patch_size**2, self.pretrain_dim)  # [C*9, P]
            weight = per_layer @ agg[i * self.pretrain_dim : (i + 1) * self.pretrain_dim]  # [C*9, T]
            self.register_buffer(f"w{i}", weight.contiguous(), persistent=False)

    @property
    def dim(self) -> int:
        return self.target_dim

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(maps) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} feature maps, got {len(maps)}")
        ref_h, ref_w = maps[0].shape[-2:]
        pad = self.patch_size // 2
        out = None
        for i, fmap in enumerate(maps):
            b, c, h, w = fmap.shape
            cols = F.unfold(fmap.float(), kernel_size=self.patch_size, padding=pad)  # [B, C*9, h*w]
            weight = getattr(self, f"w{i}")
            proj = torch.matmul(cols.transpose(1, 2), weight)  # [B, h*w, T]
            proj = proj.transpose(1, 2).reshape(b, self.target_dim, h, w)
            if (h, w) != (ref_h, ref_w):
                proj = F.interpolate(proj, size=(ref_h, ref_w), mode="bilinear", align_corners=False)
            out = proj if out is None else out + proj
        return out


def official_reference(maps: Sequence[torch.Tensor], pretrain_dim: int = 1024, target_dim: int = 1024) -> torch.Tensor:
    """The official code's order of operations (unfold, upsample the unfolded patches,
    pool per layer, stack, pool again) -> [B*H0*W0, target_dim]. Slow; for tests only."""
    ref_h, ref_w = maps[0].shape[-2:]
    per_layer = []
    for fmap in maps:
        b, c, h, w = fmap.shape
        cols = F.unfold(fmap.float(), kernel_size=3, padding=1).reshape(b, c, 3, 3, h, w)
        if (h, w) != (ref_h, ref_w):
            flat = cols.reshape(-1, 1, h, w)
            flat = F.interpolate(flat, size=(ref_h, ref_w), mode="bilinear", align_corners=False)
            cols = flat.reshape(b, c, 3, 3, ref_h, ref_w)
        patches = cols.permute(0, 4, 5, 1, 2, 3).reshape(-1, 1, c * 9)
        per_layer.append(F.adaptive_avg_pool1d(patches, pretrain_dim).squeeze(1))
    stacked = torch.stack(per_layer, dim=1).reshape(per_layer[0].shape[0], 1, -1)
    return F.adaptive_avg_pool1d(stacked, target_dim).squeeze(1)
