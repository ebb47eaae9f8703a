"""StableAdamW: AdamW whose step is shrunk when the update's RMS exceeds a threshold.

Why here: Dinomaly trains with it (official code ``optimizers/StableAdamW.py`` at
guojiajeremy/Dinomaly ``c5c76d0``; the idea is Wortsman et al., "Stable and low-precision
training for large-scale vision-language models", 2023, which folds AdaFactor's update clipping
into AdamW). It belongs to the shared training layer, not to one method, like the schedules.

One step, per parameter, in the official order:

1. decoupled weight decay first: ``p *= 1 - lr * weight_decay``;
2. Adam moments: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``; with ``amsgrad`` the
   running maximum of ``v`` replaces ``v`` in the denominator;
3. ``denom = sqrt(v) / sqrt(1 - b2^t) + eps``;
4. update clipping: ``scale = max(1, RMS(g / denom) / clip_threshold)`` -- the RMS of the
   *current gradient* over the denominator, not of ``m`` (as the official code computes it);
5. ``p -= lr / (1 - b1^t) / scale * m / denom``.

The state holds ``step`` as a plain integer (as the official code), ``exp_avg``, ``exp_avg_sq`` and
``max_exp_avg_sq`` (amsgrad), so checkpoints restore it exactly.
"""
from __future__ import annotations

import math

import torch


class StableAdamW(torch.optim.Optimizer):
    """AdamW with update clipping (module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, clip_threshold: float = 1.0):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"StableAdamW: lr {lr}, eps {eps} and weight_decay {weight_decay} must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"StableAdamW: betas {betas} must lie in [0, 1)")
        if clip_threshold <= 0:
            raise ValueError(f"StableAdamW: clip_threshold {clip_threshold} must be > 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        clip_threshold=clip_threshold)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("StableAdamW does not support sparse gradients")
                p.mul_(1 - lr * group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                correction1 = 1 - beta1 ** state["step"]
                correction2 = 1 - beta2 ** state["step"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(correction2)).add_(eps)
                ratio = grad / denom
                rms = float(ratio.norm(2)) / math.sqrt(ratio.numel())
                scale = max(1.0, rms / group["clip_threshold"])
                p.addcdiv_(exp_avg, denom, value=-(lr / correction1 / scale))
        return loss
