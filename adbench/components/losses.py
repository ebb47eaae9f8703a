"""Training losses shared by methods that segment synthetic anomalies or reconstruct images.

* ``focal_loss``: Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017),
  ``FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t`` averaged over pixels. DRAEM trains its
  discriminative sub-network with it (gamma = 2, no class weighting, as the official DRAEM
  code does); ToCoAD's stage I reuses it. It takes *logits* and works in log-space
  (``log_softmax``) instead of the official code's clamp-then-log of softmax probabilities:
  the same value where both are finite, without the ``smooth`` fudge. With ``gamma = 0`` and
  no ``alpha`` it is exactly cross-entropy (a test checks that).
* ``ssim_loss``: ``1 - SSIM`` (Wang et al. 2004), 11x11 Gaussian window as in DRAEM and the
  MVTec AD autoencoder baseline. SSIM itself comes from kornia (a maintained library) rather
  than a hand-written one. Note kornia's own ``kornia.losses.ssim_loss`` returns
  ``(1 - SSIM) / 2``; DRAEM's loss is ``1 - SSIM``, which is what this returns.
* ``ssim_map``: the per-pixel SSIM (mean over channels), for SSIM residual anomaly maps.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Optional[Sequence[float] | torch.Tensor] = None,
) -> torch.Tensor:
    """Mean focal loss of dense class logits.

    logits: [B, C, H, W] (or [B, C]) unnormalised scores.
    target: [B, H, W] (or [B]) class indices; a bool/float mask is read as class 1 where > 0.5.
    gamma:  focusing parameter (2 in DRAEM and ToCoAD); 0 gives cross-entropy.
    alpha:  optional per-class weights (length C); None weighs all classes 1.
    """
    if target.dtype == torch.bool or target.is_floating_point():
        target = (target.float() > 0.5).long()
    if target.dim() == logits.dim():  # [B, 1, H, W] masks
        target = target.squeeze(1)
    target = target.long()
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    pt = log_pt.exp()
    loss = -((1.0 - pt).clamp_min(0.0) ** gamma) * log_pt
    if alpha is not None:
        weights = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if weights.numel() != logits.shape[1]:
            raise ValueError(f"focal_loss: alpha has {weights.numel()} values for {logits.shape[1]} classes")
        loss = loss * weights[target]
    return loss.mean()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, max_val: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM of two [B, C, H, W] images, averaged over channels -> [B, H, W]."""
    from kornia.metrics import ssim

    return ssim(x.float(), y.float(), window_size, max_val=max_val).mean(dim=1)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, max_val: float = 1.0) -> torch.Tensor:
    """``1 - mean SSIM`` of two [B, C, H, W] images (0 for identical images)."""
    return 1.0 - ssim_map(x, y, window_size, max_val).mean()
