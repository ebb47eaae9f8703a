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

``upsample="nearest"`` brings deeper layers to the finest grid by nearest-neighbour instead of
bilinear interpolation (anomalib 0.3.x's choice, see below); bilinear is the official code's.

``AnomalibAggregator`` is the other recipe: anomalib 0.3.x's PatchCore
(``anomalib/models/patchcore/torch_model.py``, tags v0.3.0-v0.3.7, ``generate_embedding``),
which the MIAD benchmark ran (appendix A.2.2). Each layer is smoothed by a 3x3 average pool
(stride 1, padding 1) on its own grid, deeper layers are brought to the finest grid by
``F.interpolate(..., mode="nearest")`` (each layer-3 cell repeated 2x2), and the layers are
concatenated along channels: no adaptive pooling and no projection, so wide_resnet50_2's layers
2 and 3 give 512 + 1024 = 1536 dims. The pool divides by the 9 cells of the window everywhere
in v0.3.0-v0.3.6 (``count_include_pad=True``, PyTorch's default) and by the cells inside the
image in v0.3.7 (``AvgPool2d(3, 1, 1, count_include_pad=False)``, torch_model.py l.41): only
the border ring of positions differs.
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
        upsample: str = "bilinear",
    ):
        super().__init__()
        if patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd, got {patch_size}")
        self.upsample = _check_mode(upsample)
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
                proj = resize(proj, (ref_h, ref_w), self.upsample)
            out = proj if out is None else out + proj
        return out


def _check_mode(mode: str) -> str:
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {mode!r}")
    return mode


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate`` of [B, C, h, w] to ``size``: bilinear with align_corners=False (official
    PatchCore) or nearest (anomalib 0.3.x, ``F.interpolate``'s default mode)."""
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class AnomalibAggregator(nn.Module):
    """anomalib 0.3.x's PatchCore embedding (module docstring): per layer a ``patch_size``
    average pool (stride 1, same size), deeper layers resized to the first layer's grid
    (``upsample``, nearest in anomalib), channels concatenated: [B, sum(channels), H0, W0]."""

    def __init__(
        self,
        channels: Sequence[int],
        *,
        patch_size: int = 3,
        upsample: str = "nearest",
        count_include_pad: bool = False,
    ):
        super().__init__()
        if patch_size % 2 != 1:
            raise ValueError(f"patch_size must be odd, got {patch_size}")
        self.channels = list(channels)
        self.patch_size = int(patch_size)
        self.upsample = _check_mode(upsample)
        self.pool = nn.AvgPool2d(self.patch_size, 1, self.patch_size // 2, count_include_pad=bool(count_include_pad))

    @property
    def dim(self) -> int:
        return sum(self.channels)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(maps) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} feature maps, got {len(maps)}")
        ref = tuple(maps[0].shape[-2:])
        out = []
        for fmap in maps:
            pooled = self.pool(fmap.float())
            out.append(pooled if tuple(pooled.shape[-2:]) == ref else resize(pooled, ref, self.upsample))
        return torch.cat(out, dim=1)


def official_reference(maps: Sequence[torch.Tensor], pretrain_dim: int = 1024, target_dim: int = 1024,
                       upsample: str = "bilinear") -> torch.Tensor:
    """The official code's order of operations (unfold, upsample the unfolded patches,
    pool per layer, stack, pool again) -> [B*H0*W0, target_dim]. Slow; for tests only."""
    ref_h, ref_w = maps[0].shape[-2:]
    per_layer = []
    for fmap in maps:
        b, c, h, w = fmap.shape
        cols = F.unfold(fmap.float(), kernel_size=3, padding=1).reshape(b, c, 3, 3, h, w)
        if (h, w) != (ref_h, ref_w):
            flat = cols.reshape(-1, 1, h, w)
            flat = resize(flat, (ref_h, ref_w), upsample)
            cols = flat.reshape(b, c, 3, 3, ref_h, ref_w)
        patches = cols.permute(0, 4, 5, 1, 2, 3).reshape(-1, 1, c * 9)
        per_layer.append(F.adaptive_avg_pool1d(patches, pretrain_dim).squeeze(1))
    stacked = torch.stack(per_layer, dim=1).reshape(per_layer[0].shape[0], 1, -1)
    return F.adaptive_avg_pool1d(stacked, target_dim).squeeze(1)
