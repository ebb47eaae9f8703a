"""Whole epochs that fit a budget of optimiser steps.

Why: the autoencoder's and DRAEM's ``quick`` profiles cap training by ``max_steps`` so that a
large training set (magnetic_tile, 802 images) costs about what a small one (bottle, 209) does,
and both read the cap the same way: whole epochs only, at least one. One function keeps the two
methods' budgets identical.
"""
from __future__ import annotations

import math
from typing import Optional


def effective_epochs(epochs: int, max_steps: Optional[int], n_images: int, batch_size: int) -> int:
    """Whole epochs to run: all ``epochs``, or as many as fit in ``max_steps`` optimiser steps
    of ``batch_size`` images (at least one), so a tiny training set still runs few steps."""
    if max_steps is None:
        return epochs
    steps_per_epoch = max(1, math.ceil(n_images / batch_size))
    return max(1, min(epochs, max_steps // steps_per_epoch))
