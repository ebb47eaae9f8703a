"""Linear warm-up, then cosine decay to a final value, one step per iteration.

Why here: Dinomaly's schedule (official ``utils.py`` ``WarmCosineScheduler`` at
guojiajeremy/Dinomaly ``c5c76d0``; ``base_value=2e-3, final_value=2e-4, warmup_iters=100``), a
shared training-layer piece like the optimisers. Iteration ``i`` (counted from 0) gets

* ``i < W``: ``start + i * (base - start) / (W - 1)`` (``np.linspace(start, base, W)``; the
  first iteration runs at ``start``, 0 by default: it still moves the Adam moments);
* ``W <= i < T``: ``final + (base - final) / 2 * (1 + cos(pi * (i - W) / (T - W)))``;
* ``i >= T``: ``final``.

The value is computed from the iteration, not read from a stored array, so the scheduler's
state (``last_epoch`` and a few numbers) checkpoints with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import math

import torch


def warm_cosine_value(iteration: int, *, base: float, final: float, total: int, warmup: int = 0,
                      start: float = 0.0) -> float:
    """The learning rate of ``iteration`` (module docstring)."""
    i = int(iteration)
    if i >= total:
        return float(final)
    if i < warmup:
        if warmup == 1:
            return float(start)
        if i == warmup - 1:
            return float(base)  # linspace's endpoint is exact
        return float(i * ((base - start) / (warmup - 1)) + start)  # linspace's arithmetic
    j, span = i - warmup, total - warmup
    return float(final + 0.5 * (base - final) * (1 + math.cos(math.pi * j / span)))


class WarmCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets every parameter group's learning rate to ``warm_cosine_value(last_epoch)``; call
    ``step()`` once per iteration, after ``optimizer.step()``."""

    def __init__(self, optimizer, *, base: float, final: float, total: int, warmup: int = 0, start: float = 0.0):
        if total < 1 or not 0 <= warmup <= total:
            raise ValueError(f"WarmCosineLR: need total >= 1 and 0 <= warmup <= total (got {total}, {warmup})")
        self.base, self.final, self.start = float(base), float(final), float(start)
        self.total, self.warmup = int(total), int(warmup)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        value = warm_cosine_value(self.last_epoch, base=self.base, final=self.final, total=self.total,
                                  warmup=self.warmup, start=self.start)
        return [value for _ in self.optimizer.param_groups]
