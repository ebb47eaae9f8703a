"""The input pipeline, old against new, in one run (issue 16).

    python benchmarks/bench_input_pipeline.py                 # 320 images, 3 epochs per path
    python benchmarks/bench_input_pipeline.py --images 300 --epochs 3 --workers 2

It generates a MIAD-like category under a temporary folder (the checkout may be read-only):
``--images`` training JPEGs of 1152x864 (about one megapixel, MIAD's resolution class) with
smooth industrial-looking texture, noise and a few bright scratches, saved at quality 90. Then:

1. **Samples per second delivered to the model, the model step replaced by nothing**, for two
   paper paths, epoch 2 onwards (epoch 1 of the new path includes its one decode):

   * FastFlow's paper path (``cache_features=False``, 256 px, batch 32): the old code streamed a
     DataLoader over the files every epoch (decode + resize in the main process, no workers);
     the new code decodes once, in ``--workers`` DataLoader workers, into the uint8 cache, and
     each epoch indexes it (in the job's process: ``InputSettings.in_process``), converted to
     float as the model would get them.
   * DRAEM's paper path (256 px, batch 8, procedural textures): the old code drew every
     anomaly on the main thread, with the job's torch threads, in lock-step with the model; the
     new code draws them in the workers, per (seed, epoch, image), one thread each. A third row,
     the new code with ``--workers 0``, separates what one thread per batch gains from what the
     workers add.

2. **A full quick-profile epoch, model step included**, for DRAEM and FastFlow: ``fit`` with
   ``--workers 0`` (everything in the job's process, as before) against the default workers.

``--workers`` defaults to the cores this process may use: with the model step replaced by
nothing the training loop needs no core of its own. The last stdout line is one JSON object
(``old_samples_per_s``, ``new_samples_per_s``, ``speedup`` for FastFlow's path,
``draem_old_samples_per_s``, ``draem_new_samples_per_s``, ``draem_speedup``, and the quick
epoch times in seconds).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adbench.config import resolve_config  # noqa: E402
from adbench.data import Sample, SampleDataset, collate, make_loader  # noqa: E402
from adbench.detector import RunContext  # noqa: E402
from adbench.data.batch_stream import BatchStream, gather, per_sample
from adbench.data.input_settings import InputSettings  # noqa: E402
from adbench.registry import METHODS  # noqa: E402
from adbench.training import Checkpointing  # noqa: E402
from adbench.training.session import epoch_permutation  # noqa: E402

WIDTH, HEIGHT = 1152, 864  # 0.995 megapixels


def make_category(folder: Path, n: int, seed: int = 0) -> list[Sample]:
    """``n`` MIAD-like 1-megapixel JPEGs: a smooth shaded surface, grain, a few scratches."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    samples = []
    for i in range(n):
        shade = 110 + 40 * np.sin(xx / rng.uniform(60, 200) + rng.uniform(0, 6.3)) * np.cos(yy / rng.uniform(80, 240))
        img = np.stack([shade, shade * 0.95, shade * 0.85], -1) + rng.normal(0, 8, (HEIGHT, WIDTH, 3))
        for _ in range(3):
            y = int(rng.integers(0, HEIGHT - 4))
            img[y : y + 3, int(rng.integers(0, WIDTH // 2)) : int(rng.integers(WIDTH // 2, WIDTH))] += 60
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        samples.append(Sample(path=path, label=0, category="bench", split="train"))
    return samples


def rate(per_epoch: list[tuple[int, float]]) -> float:
    """Samples per second over epochs 2 onwards (index 1..)."""
    later = per_epoch[1:] or per_epoch
    return sum(n for n, _ in later) / sum(s for _, s in later)


# --- 1. the paths with the model step replaced by nothing ---------------------------------------
def fastflow_old(samples, preprocess, batch, epochs) -> list[tuple[int, float]]:
    """The old paper path: per epoch, a DataLoader over the files in the epoch's order."""
    dataset = SampleDataset(samples, preprocess, with_masks=False)
    out = []
    for epoch in range(epochs):
        t0, n = time.perf_counter(), 0
        order = epoch_permutation(0, "train", epoch, len(dataset)).tolist()
        for b in torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=order, collate_fn=collate):
            n += len(b)
        out.append((n, time.perf_counter() - t0))
    return out


def fastflow_new(samples, preprocess, batch, epochs, settings) -> list[tuple[int, float]]:
    """The new paper path: one decode into the cache, batches from the workers."""
    context = RunContext(seed=0, inputs=settings, checkpoints=Checkpointing(seed=0))
    loader = make_loader(samples, preprocess, batch_size=batch, train=True, num_workers=settings.workers)
    out = []
    t0 = time.perf_counter()
    images = context.training_images(loader)
    phase = context.checkpoints.phase("train")
    stream = BatchStream(phase.plan(epochs, len(images), batch), gather(images), settings.in_process())
    for epoch in phase.epochs(epochs):
        n = 0
        for (b,) in stream.epoch(epoch):
            x = b.float() / 255.0  # what the model would receive
            n += len(x)
        out.append((n, time.perf_counter() - t0))
        t0 = time.perf_counter()
    stream.close()
    return out


def draem_old(images, sampler, batch, epochs) -> list[tuple[int, float]]:
    """The old DRAEM loop: every anomaly drawn on the main thread, batch by batch."""
    rng = np.random.default_rng(0)
    out = []
    for epoch in range(epochs):
        t0, n = time.perf_counter(), 0
        order = epoch_permutation(0, "train", epoch, len(images))
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            triples = [sampler(img, rng) for img in images[idx]]
            normal, augmented, mask = (torch.stack(p) for p in zip(*triples))
            n += len(normal)
        out.append((n, time.perf_counter() - t0))
    return out


def draem_new(images, sampler, batch, epochs, settings) -> list[tuple[int, float]]:
    phase = Checkpointing(seed=0).phase("train")
    stream = BatchStream(phase.plan(epochs, len(images), batch), per_sample(images, sampler, 0, "draem/anomalies"),
                         settings)
    out = []
    for epoch in phase.epochs(epochs):
        t0, n = time.perf_counter(), 0
        for normal, augmented, mask in stream.epoch(epoch):
            n += len(normal)
        out.append((n, time.perf_counter() - t0))
    stream.close()
    return out


# --- 2. quick-profile epochs, model step included -------------------------------------------------
def quick_epoch_seconds(method: str, samples, overrides: dict, workers: int) -> float:
    cls = METHODS.get(method)
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick", overrides)
    torch.manual_seed(0)
    context = RunContext(seed=0, weights="random", profile="quick", inputs=InputSettings(workers=workers),
                         checkpoints=Checkpointing(seed=0))
    detector = cls(cfg, context)
    loader = make_loader(samples, detector.preprocess(), batch_size=int(cfg.batch_size), train=True,
                         num_workers=workers)
    t0 = time.perf_counter()
    detector.fit(loader)
    return (time.perf_counter() - t0) / max(1, len(detector.loss_history))


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=cores)
    ap.add_argument("--quick-images", type=int, default=96, help="images for the quick-profile epochs")
    args = ap.parse_args()
    if args.images < 300:
        print("note: fewer than 300 images; the issue's measurement uses at least 300", file=sys.stderr)
    settings = InputSettings(workers=args.workers)
    from adbench.methods.draem import DRAEMAnomalySampler, TextureSource

    with tempfile.TemporaryDirectory(prefix="adbench-bench-inputs-") as tmp:
        t0 = time.perf_counter()
        samples = make_category(Path(tmp), args.images)
        mb = sum(s.path.stat().st_size for s in samples) / 2**20
        print(f"{len(samples)} JPEGs of {WIDTH}x{HEIGHT} ({mb:.0f} MB) made in {time.perf_counter() - t0:.1f} s; "
              f"{cores} cores, {args.workers} workers, torch {torch.__version__}, {torch.get_num_threads()} threads")

        ff_cls = METHODS.get("fastflow")
        ff_cfg = resolve_config(ff_cls.Config, ff_cls.PROFILES, "paper", {})
        from adbench.data import Preprocess

        preprocess = Preprocess(image_size=ff_cfg.image_size, crop_size=ff_cfg.crop_size)
        ff_old = fastflow_old(samples, preprocess, ff_cfg.batch_size, args.epochs)
        ff_new = fastflow_new(samples, preprocess, ff_cfg.batch_size, args.epochs, settings)

        dr_cls = METHODS.get("draem")
        dr_cfg = resolve_config(dr_cls.Config, dr_cls.PROFILES, "paper", {})
        dr_loader = make_loader(samples, Preprocess(image_size=dr_cfg.image_size), batch_size=dr_cfg.batch_size,
                                train=True, num_workers=args.workers)
        images = RunContext(inputs=settings).training_images(dr_loader)
        sampler = DRAEMAnomalySampler(TextureSource(None), dr_cfg.anomaly_prob, dr_cfg.beta_max, dr_cfg.rotate_prob,
                                      dr_cfg.rotate_degrees, dr_cfg.texture_ops, dr_cfg.augmenter_pool)
        dr_old = draem_old(images, sampler, dr_cfg.batch_size, args.epochs)
        dr_alone = draem_new(images, sampler, dr_cfg.batch_size, args.epochs, settings.in_process())
        dr_new = draem_new(images, sampler, dr_cfg.batch_size, args.epochs, settings)

        quick = samples[: args.quick_images]
        default_workers = max(0, min(8, cores - 1))
        q = {
            "draem": {"epochs": 2, "max_steps": None},
            "fastflow": {"epochs": 2, "cache_features": False},
        }
        quick_times = {m: (quick_epoch_seconds(m, quick, o, 0), quick_epoch_seconds(m, quick, o, default_workers))
                       for m, o in q.items()}

    rows = [
        ("FastFlow paper path (256 px, batch 32)", rate(ff_old), rate(ff_new)),
        (f"DRAEM paper path (256 px, batch 8), {args.workers} workers", rate(dr_old), rate(dr_new)),
        ("DRAEM paper path, new code, --workers 0", rate(dr_old), rate(dr_alone)),
    ]
    print(f"\nsamples/s delivered to the model (model step = nothing), epochs 2-{args.epochs}:")
    print(f"{'path':48s} {'old':>10s} {'new':>10s} {'speedup':>8s}")
    for name, old, new in rows:
        print(f"{name:48s} {old:10.1f} {new:10.1f} {new / old:7.2f}x")
    print(f"  first epoch of the new FastFlow path (includes the one decode): {ff_new[0][1]:.1f} s; "
          f"an old epoch: {ff_old[1][1]:.1f} s")
    print(f"\nquick-profile epoch with the model step, {len(quick)} images (s per epoch, mean of {2} epochs):")
    print(f"{'method':20s} {'--workers 0':>12s} {'--workers ' + str(default_workers):>12s} {'ratio':>7s}")
    for m, (old, new) in quick_times.items():
        print(f"{m:20s} {old:12.2f} {new:12.2f} {old / new:6.2f}x")
    result = {
        "images": len(samples), "megapixels": round(WIDTH * HEIGHT / 1e6, 3), "workers": args.workers, "cores": cores,
        "old_samples_per_s": round(rows[0][1], 2), "new_samples_per_s": round(rows[0][2], 2),
        "speedup": round(rows[0][2] / rows[0][1], 2),
        "draem_old_samples_per_s": round(rows[1][1], 2), "draem_new_samples_per_s": round(rows[1][2], 2),
        "draem_speedup": round(rows[1][2] / rows[1][1], 2),
        "quick_epoch_s": {m: {"workers_0": round(o, 3), f"workers_{default_workers}": round(n, 3)}
                          for m, (o, n) in quick_times.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
