"""Per-step GPU times, host synchronisations, and a MIAD estimate per method (issue 16).

    python benchmarks/gpu_steps.py --device cuda            # on a GPU machine (gpu_check.sh runs it)
    python benchmarks/gpu_steps.py --device cpu --methods draem --images 16   # checks the script

For every trained method it builds the ``paper`` profile (random weights: step time does not
depend on weight values), trains on random images at the paper geometry for a few steps, and
measures, in ``--precision`` fp32 and bf16:

* **ms per training step**: the wall time between the end of step 2 and the end of the last
  step, with one ``torch.cuda.synchronize()`` at each end (so queued GPU work is counted), over
  the steps in between;
* **host synchronisations per step**: ``torch.cuda.set_sync_debug_mode("warn")`` is on during
  those steps and each warning it raises is counted (``.item()``, ``float(tensor)``, a
  ``.cpu()`` copy, a blocking ``nonzero``...). The harness reads losses once per epoch and checks
  them for NaN every 50 steps on a GPU; anything above that is a per-step wait in a loop.
* ``bf16+cl``: bf16 with the networks in channels_last memory format (networks a method builds
  inside ``fit``, such as CutPaste's, stay as they are), to see where NHWC pays;
* **MIAD estimate**: the paper's optimiser steps for a 10,000-image category (``--miad-images``)
  times the measured step time. It counts training only: not the one decode of the images, the
  test pass, PatchCore's coreset or a memory-bank search. PatchCore has no training: its line is
  the feature extraction of the training images (ms per image).

Steps mix phases where a method has several (ToCoAD's two stages are timed together).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adbench.config import resolve_config  # noqa: E402
from adbench.data import Batch  # noqa: E402
from adbench.detector import RunContext  # noqa: E402
from adbench.errors import UserError  # noqa: E402
from adbench.precision import channels_last, configure_backends  # noqa: E402
from adbench.registry import METHODS  # noqa: E402
from adbench.training import Checkpointing  # noqa: E402
from adbench.training.session import Phase  # noqa: E402

#: overrides that keep each timing short (steps, not recipe: geometry, batch and widths stay)
SHORT = {
    "draem": {"epochs": 2},
    "autoencoder": {"epochs": 2},
    "reverse_distillation": {"epochs": 2},
    "fastflow": {"epochs": 2},
    "uniad": {"epochs": 2, "lr_step_epoch": 1},
    "cutpaste": {"epochs": 1, "steps_per_epoch": 10},
    "cutpaste_patch": {"epochs": 1, "steps_per_epoch": 10},
    "tocoad": {"dnp_epochs": 1, "ncl_epochs": 1, "steps_per_epoch": 5},
}
TRAINED = tuple(SHORT)


def miad_steps(cfg, n_images: int) -> int:
    """Optimiser steps of the paper recipe over ``n_images`` training images."""
    def per_epoch(batch):
        spe = getattr(cfg, "steps_per_epoch", None)
        return int(spe) if spe else math.ceil(n_images / int(batch))
    if hasattr(cfg, "dnp_epochs"):  # ToCoAD: stage I + stage II
        return (int(cfg.dnp_epochs) + int(cfg.ncl_epochs)) * per_epoch(cfg.batch_size)
    return int(cfg.epochs) * per_epoch(cfg.batch_size) + int(getattr(cfg, "head_only_epochs", 0) or 0) * per_epoch(cfg.batch_size)


def random_batches(n: int, size: int, batch: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    return [Batch(images[i : i + batch], torch.zeros(len(images[i : i + batch]), dtype=torch.long),
                  [f"{j}.png" for j in range(i, i + len(images[i : i + batch]))], ["bench"] * len(images[i : i + batch]),
                  ["good"] * len(images[i : i + batch])) for i in range(0, n, batch)]


class StepClock:
    """Times steps 3..last through ``Phase.step_done`` and counts the sync warnings raised
    between the end of step 2 and the end of the last step (not those after training)."""

    def __init__(self, device: torch.device, caught: list, start_after: int = 2):
        self.device, self.caught, self.start_after = device, caught, start_after
        self.steps, self.timed, self.t0, self.t1 = 0, 0, None, None
        self.warnings_at_start, self.warnings_at_last = 0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize(self.device)
            torch.cuda.set_sync_debug_mode("warn")

    def after_step(self) -> None:
        self.steps += 1
        if self.steps < self.start_after:
            return
        self._sync()  # the measurement's own waits, outside the count
        if self.steps == self.start_after:
            self.t0, self.warnings_at_start = time.perf_counter(), self._syncs_seen()
            return
        self.timed += 1
        self.t1, self.warnings_at_last = time.perf_counter(), self._syncs_seen()

    def _syncs_seen(self) -> int:
        return sum(1 for w in self.caught if "synchroniz" in str(w.message).lower())

    @property
    def ms_per_step(self):
        return None if not self.timed else (self.t1 - self.t0) / self.timed * 1000

    @property
    def syncs_per_step(self) -> float:
        return (self.warnings_at_last - self.warnings_at_start) / max(1, self.timed)


def time_method(method: str, precision: str, device: torch.device, n_images: int, miad_images: int) -> dict:
    cls = METHODS.get(method)
    paper = resolve_config(cls.Config, cls.PROFILES, "paper", {})
    short = resolve_config(cls.Config, cls.PROFILES, "paper", SHORT.get(method, {}))
    size = int(getattr(short, "image_size", 256))
    base, _, variant = precision.partition("+")  # "bf16+cl": bf16 with networks in channels_last
    configure_backends(base, device)
    torch.manual_seed(0)
    context = RunContext(device=device, seed=0, weights="random", profile="paper", precision=base,
                         checkpoints=Checkpointing(seed=0, check_every_steps=50 if device.type == "cuda" else 1))
    detector = cls(short, context)
    if variant == "cl":
        channels_last(detector)
    batch = int(getattr(short, "batch_size", 8))
    data = random_batches(max(n_images, 3 * batch), size, batch)
    if method not in TRAINED:  # PatchCore: the bank's feature extraction, per image
        t0 = time.perf_counter()
        detector.fit(data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        per_image = (time.perf_counter() - t0) / len(torch.cat([b.images for b in data]))
        return {"method": method, "precision": precision, "ms_per_image": round(per_image * 1000, 2),
                "miad_hours": round(per_image * miad_images / 3600, 3), "what": "memory bank: extraction and coreset of the timed images, no training"}
    real = Phase.step_done
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clock = StepClock(device, caught)

        def step_done(phase, loss, n=1):
            real(phase, loss, n)
            clock.after_step()

        Phase.step_done = step_done
        try:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            detector.fit(data)
        finally:
            Phase.step_done = real
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    ms = clock.ms_per_step
    steps = miad_steps(paper, miad_images)
    return {"method": method, "precision": precision, "image_size": size, "batch": batch,
            "timed_steps": clock.timed, "ms_per_step": None if ms is None else round(ms, 2),
            "host_syncs_per_step": round(clock.syncs_per_step, 2),
            "miad_steps": steps, "miad_hours": None if ms is None else round(ms * steps / 3.6e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", default=",".join(TRAINED + ("patchcore",)))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--channels-last", default="draem,autoencoder,reverse_distillation",
                    help="methods also timed as bf16+cl (convolutional networks built before fit)")
    ap.add_argument("--images", type=int, default=48, help="random training images per timing")
    ap.add_argument("--miad-images", type=int, default=10_000)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here")
    rows = []
    nhwc = {m.strip() for m in args.channels_last.split(",") if m.strip()}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        for precision in args.precisions.split(",") + (["bf16+cl"] if method in nhwc else []):
            t0 = time.perf_counter()
            try:
                row = time_method(method, precision, device, args.images, args.miad_images)
            except (UserError, RuntimeError, ValueError) as exc:
                row = {"method": method, "precision": precision, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'method':22s} {'prec':5s} {'ms/step':>9s} {'syncs/step':>10s} {'MIAD steps':>11s} {'MIAD h (train)':>14s}")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:22s} {r['precision']:5s} error: {r['error']}")
        elif "ms_per_image" in r:
            print(f"{r['method']:22s} {r['precision']:5s} {r['ms_per_image']:>7.2f}/img {'':>10s} {'':>11s} {r['miad_hours']:>14.3f}")
        else:
            print(f"{r['method']:22s} {r['precision']:5s} {r['ms_per_step'] or float('nan'):9.2f} "
                  f"{r['host_syncs_per_step']:10.2f} {r['miad_steps']:11d} {r['miad_hours'] or float('nan'):14.2f}")
    print(json.dumps({"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "rows": rows}))


if __name__ == "__main__":
    main()
