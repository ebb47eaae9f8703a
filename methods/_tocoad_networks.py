"""ToCoAD's trainable networks: the discriminative network D and the contrastive heads C.

ToCoAD (Liang et al., seed 002) trains two networks around the feature extractor F:

* D (Sec. 3.1 and 4.1: "an inverse WideResNet50 ... operated with up-sampling, concatenating,
  and dimension compression operations. It finally predicts a feature map with 2 channels with
  the same dimensions as the input image"). ``build_discriminator`` makes either
  - ``inverse`` (the paper profile): ``_tocoad_inverse_resnet.InverseResNet``, F's residual
    stages run backwards (25.8 M parameters for wide_resnet50_2 layers 1-3), or
  - ``light``: ``DiscriminativeNet`` below, a feature-pyramid-style decoder (1.1 M parameters
    for wide_resnet50_2 at width 256): compress the deepest map, upsample x2 to the next
    shallower grid, concatenate that layer's (compressed) map, fuse with two 3x3 conv-BN-ReLU,
    and so on; at the shallowest grid a 3x3 conv gives the 2 logits, upsampled bilinearly to
    the input size. Widths halve at every step up. Our option for CPU budgets.
  Which layers of F feed D is not stated by the paper; the method config chooses
  (``dnp_layers``) and records it.
* ``SiameseHeads`` (C, Sec. 3.2, 4.1 and Fig. 4): per selected layer, adaptive average pooling
  to a vector, a 3-layer MLP projector (SimSiam's: Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN)
  and a 1-layer predictor (the paper says 1 layer; SimSiam's own predictor is a 2-layer
  bottleneck). The projector is shared by all views; the stop-gradient sits on the projector
  branch (eq. 4). ``concat=True`` pools every layer, concatenates the vectors and uses one
  head (the Table 8 ablation). ``mode="byol"`` (Table 9) keeps an exponential-moving-average
  target copy of the projector (the trainer keeps the EMA copy of F).

L_sym, exactly as eq. 3-5 write it (``SiameseHeads.loss``). With D(p, z) = -<p/|p|, z/|z|>
(eq. 3) and L_cossim(f^i, f^j) = 1/2 D(p_i, SG(z_j)) + 1/2 D(p_j, SG(z_i)) (eq. 4), eq. 5 is

    L_sym = 2 / (M (M - 1)) * sum_i sum_{j != i} L_cossim(f^i, f^j)
          = 2 * mean over the M (M - 1) ordered pairs i != j of D(p_i, SG(z_j)),

both lines of eq. 5 agree. With M = 2 views (the paper's setting): L_sym = D(p_1, SG(z_2)) +
D(p_2, SG(z_1)), in [-2, 2]: *twice* SimSiam's own loss (which has the 1/2 factors of eq. 4
only); that scale is what eq. 6's lambda balances against L_neg, so we keep it. BYOL (Table 9;
the paper gives no formula): the same sum with BYOL's per-direction loss 2 - 2 cos = 2 + 2 D in
place of D (for M = 2 exactly BYOL's symmetrised loss L + L~).

Several layers (layers 3 and 4 by default): one head per layer and L_sym = the *mean* of the
per-layer L_sym. The paper does not say; the mean keeps L_sym in eq. 5's range whatever the
number of layers, so lambda = 0.5 weighs the two terms of eq. 6 the same way in every row of
Table 4 (layer 4 alone, 2+3, 3+4, 2+3+4); a sum would tilt eq. 6 towards L_sym as layers are
added.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DiscriminativeNet(nn.Module):
    """The light D (``dnp_decoder=light``): F's maps (any number, any strides) -> 2-channel logits.

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
    """C: per-layer pooling + projector + predictor; ``loss(views)`` is L_sym (eq. 5).

    in_channels: channels of the layers C sees (one head each, or one over their concatenation
    when ``concat``). mode: ``simsiam`` (stop-gradient on the projector branch) or ``byol``
    (targets from an EMA copy of the projector; the caller passes the EMA backbone's features
    as ``target_views``).
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

    def loss(self, views: Sequence[Sequence[torch.Tensor]],
             target_views: Optional[Sequence[Sequence[torch.Tensor]]] = None) -> torch.Tensor:
        """L_sym of eq. 5 (see the module docstring), averaged over heads.

        views: per view (M >= 2), F's maps of the contrastive layers. target_views: BYOL only,
        the EMA copy of F's maps of the same views.
        """
        m = len(views)
        if m < 2:
            raise ValueError(f"L_sym needs at least 2 views, got {m}")
        z = [self.project(f) for f in views]  # z[i][h]
        p = [[pred(zh) for pred, zh in zip(self.predictors, zi)] for zi in z]
        if self.mode == "byol":
            with torch.no_grad():
                targets = [self.project(f, target=True) for f in target_views]
        else:
            targets = [[zh.detach() for zh in zi] for zi in z]  # SG on the projector branch
        per_head = []
        for h in range(len(self.projectors)):
            terms = [negative_cosine(p[i][h], targets[j][h]) for i in range(m) for j in range(m) if j != i]
            if self.mode == "byol":
                terms = [2 + 2 * t for t in terms]
            per_head.append(2 * torch.stack(terms).mean())
        return torch.stack(per_head).mean()

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


def build_discriminator(kind: str, channels: Sequence[int], strides: Sequence[int], *, width: int = 256,
                        blocks: Sequence[int] = (3, 4, 6)) -> nn.Module:
    """D for F's maps with ``channels``/``strides`` (shallow -> deep): ``inverse`` (the paper's
    inverse ResNet, ``blocks`` per stage) or ``light`` (``DiscriminativeNet`` of ``width``)."""
    if kind == "inverse":
        from adbench.methods._tocoad_inverse_resnet import InverseResNet

        return InverseResNet(channels, strides, blocks)
    if kind == "light":
        return DiscriminativeNet(channels, width=width)
    raise ValueError(f"discriminator kind {kind!r}: expected inverse or light")
