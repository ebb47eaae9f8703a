"""A tiny generated texture category shared by the feature-reconstruction method tests.

Striped texture with random phase, gain and noise; defects are a coloured blob. Small (64 px)
so Reverse Distillation and FastFlow tests train in seconds; one torch thread, since on a
shared CPU the OpenMP barriers of two threads cost 5-10x wall time on tensors this small.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.data import Batch

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Run the importing module's tests single-threaded; restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def as_batch(images: torch.Tensor) -> Batch:
    n = len(images)
    return Batch(images, torch.zeros(n, dtype=torch.long), [""] * n, ["gen"] * n, ["good"] * n)


def make_category(n_train: int = 32, n_good: int = 10, n_bad: int = 10, seed: int = 0):
    """Returns (train batch list, test images [N,3,S,S], test labels [N])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

    def normal():
        phase = rng.uniform(0, 2 * np.pi)
        stripes = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 8.0 + phase)
        img = np.stack([stripes * c for c in (0.9, 0.8, 0.6)], 0) * rng.uniform(0.85, 1.15)
        return img + rng.normal(0, 0.03, img.shape)

    def defective():
        img = normal()
        cy, cx = rng.uniform(14, SIZE - 14, size=2)
        blob = np.hypot(yy - cy, xx - cx) < rng.uniform(6, 9)
        img[:, blob] = np.array([0.15, 0.35, 0.8])[:, None] + rng.normal(0, 0.03, (3, int(blob.sum())))
        return img

    to_t = lambda arr: torch.from_numpy(np.clip(np.stack(arr), 0, 1).astype(np.float32))
    train = to_t([normal() for _ in range(n_train)])
    test = to_t([normal() for _ in range(n_good)] + [defective() for _ in range(n_bad)])
    labels = np.array([0] * n_good + [1] * n_bad)
    return [as_batch(train[i : i + 16]) for i in range(0, n_train, 16)], test, labels
