"""Seconds per training epoch of DRAEM and the autoencoder (paper profiles) on this CPU.

A paper epoch is one pass over the training set (bottle: 209 images at 256 px); DRAEM runs
700 of them, the autoencoder 100. Training them here is out of reach, so this times a few
optimiser steps of the real training code (DRAEM: synthetic-anomaly sampling included) on
random images at the paper geometry and scales per image to the epoch. It prints both
process CPU seconds (what the step costs, roughly load-independent) and wall seconds (what it
took on the shared machine), with ``uptime`` load before and after: wall time under contention
is inflated. Use a small ``batch`` to keep the measurement short; per-image cost of conv nets
barely depends on the batch size on a CPU.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_draem_autoencoder_epoch.py [method] [batch] [steps]``
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from adbench.config import resolve_config
from adbench.registry import METHODS

N_IMAGES = 209  # MVTec bottle training set


def step_fn(name: str, det, batch: int, size: int):
    images = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    if name == "draem":
        params = list(det.reconstructive.parameters()) + list(det.discriminative.parameters())
        opt = torch.optim.Adam(params, lr=det.config.lr)
        rng = np.random.default_rng(0)

        def step():
            normal, augmented, mask = det.sampler.batch(images, rng)
            loss = det.training_loss(normal, augmented, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        from adbench.methods.autoencoder import normalise

        opt = torch.optim.Adam(det.model.parameters(), lr=det.config.lr, weight_decay=det.config.weight_decay)

        def step():
            x = normalise(images.float() / 255.0)
            loss = det.reconstruction_loss(det.model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "autoencoder"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    cls = METHODS.get(name)
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper")
    torch.manual_seed(0)
    det = cls(cfg)
    print(f"{name} paper: image {cfg.image_size}, paper batch {cfg.batch_size}, epochs {cfg.epochs}, "
          f"{det.num_parameters() / 1e6:.1f} M parameters; timing batch {batch}, torch threads {torch.get_num_threads()}")
    print("load before:", os.getloadavg())
    step = step_fn(name, det, batch, cfg.image_size)
    step()  # warm-up
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    cpu = (time.process_time() - cpu0) / (steps * batch) * N_IMAGES
    wall = (time.perf_counter() - wall0) / (steps * batch) * N_IMAGES
    print("load after:", os.getloadavg())
    print(f"{name} paper epoch on bottle ({N_IMAGES} images): {cpu:.0f} CPU s, {wall:.0f} wall s; "
          f"x{cfg.epochs} epochs = {cpu * cfg.epochs / 3600:.1f} CPU h")


if __name__ == "__main__":
    main()
