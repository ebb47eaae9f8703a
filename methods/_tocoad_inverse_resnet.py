"""An inverse ResNet: a decoder that runs a feature extractor's residual stages backwards.

ToCoAD's discriminative network D (seed 002) is "symmetric with the feature extractor, such as
the WideResNet50 ... successively up-sampling and splicing the extracted features" (Sec. 3.1),
"an inverse WideResNet50 ... operated with up-sampling, concatenating, and dimension
compression operations. It finally predicts a feature map with 2 channels with the same
dimensions as the input image" (Sec. 4.1). The paper gives no more detail; this is our exact
reading, built from F's channels and strides so that it works for any backbone.

What "inverse" means here. D reads F's maps of stages k = 0..K-1 (shallow to deep); stage k
outputs c_k channels at stride s_k (wide_resnet50_2 layers 1-3: 256, 512, 1024 channels at
strides 4, 8, 16). A forward ResNet stage k is n_k bottleneck blocks (1x1, 3x3, 1x1 convs with
batch-norm, residual shortcut) of which the *first* changes channels and stride
(c_{k-1} -> c_k, s_{k-1} -> s_k) and the others keep c_k. Its inverse runs the n_k blocks in the
opposite order: n_k - 1 blocks at c_k, then one block whose 3x3 conv is a transposed conv with
kernel = stride = s_k / s_{k-1} (the up-sampling; its shortcut up-samples the same way, the
decoder block of Reverse Distillation) and which outputs c_{k-1}. Every block of stage k has
the inner width c_k / 2 of a *wide* bottleneck (WRN50 layer3: 512 inside 1024).

* Deepest stage: its inverse starts from F's own map.
* Between stages ("concatenating, and dimension compression"): the up-sampled output of the
  inverse of stage k is concatenated with F's map of stage k-1 (2 c_{k-1} channels) and a 1x1
  conv-BN-ReLU compresses it back to c_{k-1} before the inverse of stage k-1.
* Shallowest stage: its inverse ends at c_0 / 4 channels on the same grid (a ResNet's first
  stage reads the stem's 64 = 256 / 4 channels; the stride changes in the stem, not in layer1).
* Inverse stem: log2(s_0) steps of x2 up-sampling (2x2 transposed conv, BN, ReLU, channels
  halved, at least 16) back to the input grid, where a 3x3 conv gives the 2 logits (normal,
  anomalous). Where an input side is not a multiple of a stride, a map is resized bilinearly to
  the grid it joins (a no-op at 224 or 256 px).

Block counts per stage (``blocks``, shallow -> deep) are the forward network's:
wide_resnet50_2 layers 1-3 have 3, 4, 6 blocks; convnext_tiny stages 0-2 have 3, 3, 9 (its
blocks are not bottlenecks, but the decoder keeps ResNet bottlenecks: "inverse" is about the
stage layout, channels and strides). For wide_resnet50_2 layers 1-3 this D has 25,844,354
parameters (``tests/test_tocoad.py`` checks the number); the light decoder
(``tocoad_networks.DiscriminativeNet``, width 256) has about 1.1 M.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from adbench.components.bottleneck import Bottleneck
from adbench.errors import ConfigError


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _ratio(big: int, small: int) -> int:
    if big % small or big < small:
        raise ConfigError(f"--set dnp_layers: the inverse decoder needs each stride to be a multiple of the "
                          f"previous one; got {small} -> {big}")
    return big // small


def _resize_to(x: torch.Tensor, hw) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(hw) else F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)


class InverseResNet(nn.Module):
    """D as an inverse ResNet (see the module docstring).

    channels, strides: of the F maps D receives, shallow -> deep (a ``Backbone``'s order).
    blocks: bottleneck blocks per inverse stage, same order (the forward network's counts).
    ``forward(feats, size)`` -> 2-channel logits [B, 2, *size].
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], blocks: Sequence[int]):
        super().__init__()
        channels, strides, blocks = list(channels), list(strides), [int(b) for b in blocks]
        if not len(channels) == len(strides) == len(blocks):
            raise ConfigError(f"--set dnp_blocks={','.join(map(str, blocks))}: needs one block count per D input "
                              f"layer ({len(channels)})")
        if any(b < 1 for b in blocks):
            raise ConfigError(f"--set dnp_blocks={','.join(map(str, blocks))}: every stage needs >= 1 block")
        self.channels, self.strides, self.blocks = channels, strides, blocks
        k_last = len(channels) - 1
        self.stages = nn.ModuleList()  # stage k's inverse, index k (shallow -> deep)
        self.compress = nn.ModuleList()  # after concatenating F's map of stage k (k < K-1)
        for k in range(len(channels)):
            c, mid = channels[k], max(channels[k] // 2, 8)
            if k > 0:
                out, up = channels[k - 1], _ratio(strides[k], strides[k - 1])
            else:
                out, up = max(channels[0] // 4, 16), 1
            layers = [Bottleneck(c, mid, c) for _ in range(blocks[k] - 1)]
            layers.append(Bottleneck(c, mid, out, up=up))
            self.stages.append(nn.Sequential(*layers))
            if k < k_last:
                self.compress.append(_conv_bn_relu(2 * c, c, 1))
        steps = int(round(math.log2(strides[0]))) if strides[0] > 1 else 0
        if 2**steps != strides[0]:
            raise ConfigError(f"--set dnp_layers: the inverse decoder needs a power-of-two stride at its shallowest "
                              f"input, got {strides[0]}")
        stem, c = [], max(channels[0] // 4, 16)
        for _ in range(steps):
            nxt = max(c // 2, 16)
            stem += [nn.ConvTranspose2d(c, nxt, 2, stride=2, bias=False), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            c = nxt
        self.stem = nn.Sequential(*stem)
        self.head = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, feats: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        feats = list(feats)
        x = feats[-1]
        for k in range(len(feats) - 1, -1, -1):
            if k < len(feats) - 1:
                x = self.compress[k](torch.cat([_resize_to(x, feats[k].shape[-2:]), feats[k]], dim=1))
            x = self.stages[k](x)
        x = _resize_to(self.stem(x), size)
        return self.head(x)
