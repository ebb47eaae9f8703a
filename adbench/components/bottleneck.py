"""The ResNet bottleneck block both decoders here are built from.

A bottleneck is 1x1 -> 3x3 -> 1x1 convolutions, batch-norm after each, ReLU after the first two
and after the residual sum (He et al. 2016, Fig. 5 right; torchvision's ``Bottleneck``). The
decoders run ResNet stages backwards, so the block also comes in an up-sampling form, the
decoder block of Reverse Distillation's official code (seed: Deng & Li, CVPR 2022): the 3x3
becomes an ``up x up`` transposed conv of stride ``up`` and the shortcut up-samples the same
way. Users: Reverse Distillation's student and OCBE (``methods/reverse_distillation.py``) and
ToCoAD's inverse-ResNet discriminator (``methods/_tocoad_inverse_resnet.py``).

The submodule names (conv1..bn3, shortcut) and their creation order are part of every saved
checkpoint and of the seeded initialisation: keep them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """``cin`` -> ``mid`` (1x1) -> ``mid`` (3x3) -> ``cout`` (1x1), plus the shortcut.

    ``down > 1``: the 3x3 conv and a 1x1 shortcut have that stride (a forward stage's first
    block). ``up > 1``: the 3x3 conv is an ``up x up`` transposed conv of stride ``up`` and the
    shortcut a transposed conv of the same kind (an inverse stage's up-sampling block). The
    shortcut is the identity when neither the shape nor the grid changes."""

    def __init__(self, cin: int, mid: int, cout: int, *, down: int = 1, up: int = 1):
        super().__init__()
        if down > 1 and up > 1:
            raise ValueError("a bottleneck block either down-samples or up-samples, not both")
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        if up > 1:
            self.conv2: nn.Module = nn.ConvTranspose2d(mid, mid, up, stride=up, bias=False)
        else:
            self.conv2 = nn.Conv2d(mid, mid, 3, stride=down, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if up > 1:
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(cin, cout, up, stride=up, bias=False), nn.BatchNorm2d(cout))
        elif down > 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=down, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))
