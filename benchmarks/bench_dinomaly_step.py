"""Speed: one Dinomaly training step, adbench's ``dinomaly`` vs the official code, on the CPU.

Why: the issue asks adbench's re-implementation to cost at most 1.1x the official code per
training step. Both sides get the same CPU threads (``torch.set_num_threads``), the same batch
of random images (default 2 x 392 x 392, the paper's crop) and the same random weights (built by
``compare_official_dinomaly.py``, which also checks that the two compute the same numbers). A
step is everything one iteration of training does:

* official: ``ViTill`` forward (frozen encoder under no_grad, bottleneck, decoder),
  ``global_cosine_hm_percent`` with its hard-mining hook, ``zero_grad``, backward,
  ``clip_grad_norm`` 0.1, ``StableAdamW.step``, ``WarmCosineScheduler.step``
  (``dinomaly_mvtec_uni.py``:176-189); it gets ImageNet-normalised images (its DataLoader's job);
* adbench: ``Dinomaly.fit``'s loop body: ``training_loss`` (normalisation of [0, 1] images
  included), ``zero_grad``, backward, ``clip_grad_norm_``, ``StableAdamW.step``, ``WarmCosineLR.step``.

Both in train mode (dropout on), float32. After one warm-up step each, the steps run
interleaved (ours, official, ours, official, ...) so that drift in machine load hits both
alike; iterations count up from 0 on each side (hard mining active from iteration 1). Prints
every time, the medians and ratio ours / official, and the load average. Other processes
distort CPU timings badly: when one of the 2 OpenMP threads is descheduled the other waits at
every parallel op's barrier, so the ~2000 small element-wise ops of a step (optimizer,
LayerNorm, GELU) can take 10x longer; the process CPU time (``time.process_time``, all threads)
is printed too as a second, less load-sensitive measure (and ``--threads 1`` has no barriers).
``--profile ROWS`` adds a torch.profiler table (top operators by self CPU time) of one more step of each.

Official checkout (``fetch`` github:guojiajeremy/Dinomaly gives a git mirror)::

    git -C /work/.mirror/guojiajeremy+Dinomaly/repo archive c5c76d0 | tar -x -C /tmp/off/Dinomaly

Run: ``python benchmarks/bench_dinomaly_step.py --official /tmp/off/Dinomaly [--threads 2 --batch 2
--size 392 --repeats 3]``. Patches to run the official code offline on CPU (stubbed ``ptflops``,
``skimage.measure``, ``colorama``; the random DINOv2 state dict written to a temporary directory
under /tmp for ``vit_encoder.load`` and deleted after loading; model and loop rebuilt from the
``uni`` script on the CPU): see ``compare_official_dinomaly.py``, whose helpers this imports.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_official_dinomaly import (build_official, build_ours, import_official, official_optimizer,  # noqa: E402
                                       official_step, ours_step, random_dinov2_state)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds, all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def profile(name: str, fn, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"\n--- profile: {name} (one step) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="checkout of guojiajeremy/Dinomaly (c5c76d0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=392, help="input side (already resized and cropped)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS", help="also profile one step of each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    off = import_official(args.official)
    try:
        sd = random_dinov2_state(off.dinov2_vit)
        model, trainable = build_official(off, sd)
        det = build_ours(sd, trainable, torch.float32)
    finally:
        shutil.rmtree(off.work, ignore_errors=True)
    del sd
    images01 = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(7))
    x = (images01 - det.encoder.mean) / det.encoder.std  # the official DataLoader's output
    model.train(), det.reconstructor.train()
    opt_off, sch_off = official_optimizer(off, trainable)
    opt_ours, sch_ours = det.make_optimizer()
    steps = {"ours": lambda it: ours_step(det, opt_ours, sch_ours, images01, it),
             "official": lambda it: official_step(off, model, trainable, opt_off, sch_off, x, it)}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, image "
          f"{args.size}x{args.size}, float32, train mode, repeats {args.repeats} (+1 warm-up each), "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    def show(label, pairs):
        return f"{label}: " + ", ".join(f"{name} {w:.2f} s (cpu {c:.2f} s)" for name, (w, c) in pairs.items())
    print(show("warm-up", {name: timed(lambda: step(0)) for name, step in steps.items()}), flush=True)
    times = {name: [] for name in steps}
    for r in range(args.repeats):
        for name, step in steps.items():
            times[name].append(timed(lambda: step(r + 1)))
        print(show(f"repeat {r}", {name: times[name][-1] for name in steps}), flush=True)
    for i, what in enumerate(("wall", "process CPU")):
        med = {name: statistics.median(t[i] for t in ts) for name, ts in times.items()}
        ratio = med["ours"] / med["official"]
        print(f"median {what} time per step: ours {med['ours']:.2f} s, official {med['official']:.2f} s, ratio "
              f"ours/official {ratio:.3f} (target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'})")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.profile:
        for name, step in steps.items():
            profile(name, lambda: step(args.repeats + 1), args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
