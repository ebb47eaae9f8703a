"""ToCoAD's trainable networks: the discriminative network D and the contrastive heads C.

ToCoAD (Liang et al., seed 002) trains two small networks around the feature extractor F:

* ``DiscriminativeNet`` (D, Sec. 3.1 and 4.1: "an inverse WideResNet50 ... operated with
  up-sampling, concatenating, and dimension compression operations. It finally predicts a
  feature map with 2 channels with the same dimensions as the input image"). D takes F's
  feature maps of some layers (deepest first), and mirrors F top-down: compress the deepest
  map, upsample x2 to the next shallower grid, concatenate that layer's (compressed) map,
  fuse with two 3x3 conv-BN-ReLU, and so on; at the shallowest grid a 3x3 conv gives the
  2-channel (normal / anomalous) logits, upsampled bilinearly to the input size. Widths halve at
  every step up, as a ResNet's halve going towards the input. The paper does not say which
  layers feed D; the method config chooses (``dnp_layers``) and records it.
* ``SiameseHeads`` (C, Sec. 3.2, 4.1 and Fig. 4): per selected layer, adaptive average pooling
  to a vector, a 3-layer MLP projector (SimSiam's: Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN)
  and a 1-layer predictor (the paper says 1 layer; SimSiam's own predictor is a 2-layer
  bottleneck). The projector is shared by both views; the stop-gradient sits on the projector
  branch (eq. 4). ``concat=True`` pools every layer, concatenates the vectors and uses one
  head (the Table 8 ablation). ``mode="byol"`` (Table 9) keeps an exponential-moving-average
  target copy of the projector (the method keeps the EMA copy of F) and uses BYOL's loss
  ``2 - 2 cos``; the SimSiam loss is eq. 3-5's negative cosine.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DiscriminativeNet(nn.Module):
    """D: F's feature maps (any number, any strides) -> 2-channel mask logits at input size.

    in_channels: channels of the maps D receives, ordered shallow -> deep (as a Backbone
    returns them). width: channels after fusing at the deepest level (halved per level up,
    never below ``min_width``).
    """

    def __init__(self, in_channels: Sequence[int], width: int = 256, min_width: int = 32):
        super().__init__()
        chans = list(in_channels)[::-1]  # deep -> shallow
        widths = [max(min_width, width // (2**i)) for i in range(len(chans))]
        self.top = _conv_bn_relu(chans[0], widths[0], 1)
        self.lateral = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(1, len(chans)):
            self.lateral.append(_conv_bn_relu(chans[i], widths[i], 1))  # dimension compression
            self.fuse.append(nn.Sequential(_conv_bn_relu(widths[i - 1] + widths[i], widths[i]),
                                           _conv_bn_relu(widths[i], widths[i])))
        last = widths[-1]
        self.head = nn.Sequential(_conv_bn_relu(last, last), nn.Conv2d(last, 2, 3, padding=1))

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        maps = list(feats)[::-1]
        x = self.top(maps[0])
        for lateral, fuse, skip in zip(self.lateral, self.fuse, maps[1:]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, lateral(skip)], dim=1))
        # logits at the shallowest input's grid, upsampled bilinearly to the input size (a 3x3
        # head at full resolution would cost 16x more at stride 4 and adds no information)
        return F.interpolate(self.head(x), size=tuple(size), mode="bilinear", align_corners=False)


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """SimSiam's 3-layer projection MLP (the last BN without affine, as in SimSiam)."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
    )


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 3: D(p, z) = -<p/|p|, z/|z|>, averaged over the batch."""
    return -(F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1).mean()


class SiameseHeads(nn.Module):
    """C: per-layer pooling + projector + predictor; ``loss(feats1, feats2)`` is L_sym (M = 2).

    in_channels: channels of the layers C sees (one head each, or one over their concatenation
    when ``concat``). mode: ``simsiam`` (stop-gradient on the projector branch) or ``byol``
    (targets from an EMA copy of the projector; the caller passes the EMA backbone's features
    as ``target_feats``).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 2048, concat: bool = False,
                 mode: str = "simsiam", ema: float = 0.996):
        super().__init__()
        if mode not in ("simsiam", "byol"):
            raise ValueError(f"contrastive mode {mode!r}: expected simsiam or byol")
        self.mode, self.concat, self.ema, self.dim = mode, bool(concat), float(ema), int(dim)
        dims = [sum(in_channels)] if self.concat else list(in_channels)
        self.projectors = nn.ModuleList(projector(c, dim) for c in dims)
        self.predictors = nn.ModuleList(nn.Linear(dim, dim) for _ in dims)  # 1-layer predictor
        self.target_projectors = None
        if mode == "byol":
            self.target_projectors = copy.deepcopy(self.projectors)
            for p in self.target_projectors.parameters():
                p.requires_grad_(False)

    def pooled(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        vecs = [F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats]
        return [torch.cat(vecs, dim=1)] if self.concat else vecs

    def project(self, feats: Sequence[torch.Tensor], target: bool = False) -> list[torch.Tensor]:
        heads = self.target_projectors if target else self.projectors
        return [h(v) for h, v in zip(heads, self.pooled(feats))]

    def loss(self, feats1, feats2, target_feats1=None, target_feats2=None) -> torch.Tensor:
        """Symmetric loss of eq. 4/5 (M = 2), averaged over heads."""
        z1, z2 = self.project(feats1), self.project(feats2)
        p1 = [pred(z) for pred, z in zip(self.predictors, z1)]
        p2 = [pred(z) for pred, z in zip(self.predictors, z2)]
        if self.mode == "byol":
            with torch.no_grad():
                t1 = self.project(target_feats1, target=True)
                t2 = self.project(target_feats2, target=True)
            # BYOL's 2 - 2cos = 2 + 2 D(p, z)
            terms = [2 + 2 * (0.5 * negative_cosine(a, tb) + 0.5 * negative_cosine(b, ta))
                     for a, b, ta, tb in zip(p1, p2, t1, t2)]
        else:
            terms = [0.5 * negative_cosine(a, zb.detach()) + 0.5 * negative_cosine(b, za.detach())
                     for a, b, za, zb in zip(p1, p2, z1, z2)]
        return torch.stack(terms).mean()

    @torch.no_grad()
    def update_target(self) -> None:
        """BYOL: target <- ema * target + (1 - ema) * online (projectors only; the method
        updates its EMA copy of F with ``ema_update``)."""
        if self.target_projectors is not None:
            ema_update(self.target_projectors, self.projectors, self.ema)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)
