"""Focal and SSIM losses (adbench.components.losses) against their definitions and kornia."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adbench.components.losses import focal_loss, ssim_loss, ssim_map


def test_focal_gamma0_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = torch.rand(2, 8, 8, generator=g) > 0.5
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target.long()), atol=1e-6)


def test_focal_matches_formula_and_down_weights_easy_pixels():
    # one pixel, two classes, p(true class) = 0.9: FL = -(0.1)^2 * log 0.9
    p = 0.9
    logits = torch.tensor([[0.0, math.log(p / (1 - p))]]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    expected = -((1 - p) ** 2) * math.log(p)
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)
    # an easy pixel is down-weighted far more than a hard one relative to cross-entropy
    hard = torch.tensor([[0.0, math.log(0.3 / 0.7)]]).view(1, 2, 1, 1)
    ratio_easy = focal_loss(logits, target).item() / F.cross_entropy(logits, target).item()
    ratio_hard = focal_loss(hard, target).item() / F.cross_entropy(hard, target).item()
    assert ratio_easy < 0.05 < ratio_hard


def test_focal_alpha_weights_classes_and_accepts_float_masks():
    logits = torch.zeros(1, 2, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    plain = focal_loss(logits, mask)
    weighted = focal_loss(logits, mask, alpha=[0.0, 1.0])  # only the one positive pixel counts
    assert weighted.item() == pytest.approx(plain.item() / 4, rel=1e-5)
    with pytest.raises(ValueError):
        focal_loss(logits, mask, alpha=[1.0, 1.0, 1.0])


def test_focal_gradient_pushes_towards_target():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    target = torch.ones(1, 4, 4, dtype=torch.long)
    focal_loss(logits, target).backward()
    assert (logits.grad[:, 1] < 0).all() and (logits.grad[:, 0] > 0).all()


def test_ssim_loss_is_one_minus_kornia_ssim():
    from kornia.metrics import ssim

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    expected = 1.0 - ssim(x, y, 11).mean()
    assert ssim_loss(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    noisier = (x + 0.5 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    assert ssim_loss(x, noisier) > ssim_loss(x, y) > 0.05
    assert ssim_map(x, y).shape == (2, 32, 32)
