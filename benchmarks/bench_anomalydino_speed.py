"""Wall time of one AnomalyDINO category, adbench against the official code, side by side.

Why. adbench's ``anomalydino`` must not be a slower way to get the official numbers
(``compare_official_anomalydino.py`` checks that they are the same numbers). Target: ours /
official <= 1.1 on the paper setting: MVTec bottle, 1-shot (seed 0), ``agnostic``
preprocessing (8 rotations of the reference, no mask for bottle), 448 px, ViT-S/14.

Both sides run in one process with the same torch / faiss / OpenCV thread count (``--threads``,
default 2), the same random DINOv2 weights (the speed of a network does not depend on its
weights), the same reference file(s) and the same ``--limit`` test images (default 20,
round-robin over the defect folders; ``--limit 0`` for all 83). Each side runs ``--repeats``
times (default 2), interleaved official, ours, official, ours, after one warm-up forward pass
of each backbone (the official script warms up too, run_anomalydino.py's "CUDA warmup"); the
medians are printed with the ratio, of wall time and of the process's CPU time (the latter
says more on a machine that other work shares: see "Shared CPUs" below).

What is timed (model construction and weight loading excluded on both sides):

* official: one call of ``run_anomaly_detection`` as run_anomalydino.py makes it with its
  defaults (``eval_clf=True`` -> ``save_patch_dists=True``: a 32x32 ``.npy`` per test image;
  ``eval_segm=False`` -> no maps; ``save_examples=False``, faiss on the CPU). It covers reading
  the images (OpenCV), rotating the reference, ``prepare_image``, one forward pass per image,
  the PCA of each reference view (the official code runs it even when masking is off),
  building the faiss index, the test 1-NN search and the score. Not timed: the metrics
  (``eval_finished_run``) and the sample plots, which run_anomalydino.py runs after it.
  Also reported, as "official+maps": the same call with ``save_tiffs=True`` (its ``dists2map``
  at the original 900x900 resolution; the TIFF writer is the compare script's no-op stub), the
  official run that produces what adbench produces (scores and maps).
* ours: ``fit`` on a loader of the reference(s), then ``predict`` on every batch of a loader of
  the test images (decoding, resize, batches of ``batch_size`` 8, scores and maps at 448). The
  loader reads no ground-truth masks (the harness reads them for its metrics; the official
  call does not read them either). Not timed: the harness's metrics.

Shared CPUs. When other processes keep the cores busy, each OpenMP barrier of a forward pass
waits for a descheduled thread, so the many small steps of one-image-at-a-time inference (the
official code) lose more than ours (batches of 8): the wall-time ratio then flatters ours. A
quiet machine, or ``--threads 1`` (no barriers), gives the fairer number.

``--profile`` runs ours once more under cProfile and prints the 20 most expensive calls.
Official checkouts: see ``compare_official_anomalydino.py``'s docstring.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the sibling importable as benchmarks.<name>
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_official_anomalydino import (adbench_sets, load_official, make_detector,  # noqa: E402
                                                     random_state, run_official, select)


def set_threads(n: int) -> None:
    import cv2
    import faiss

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    cv2.setNumThreads(n)


def time_official(off, model, args, data_root: str, maps: bool) -> tuple[float, float, float, float]:
    """(wall seconds, the official code's own bank seconds, its summed per-image inference
    seconds, process CPU seconds)."""
    with tempfile.TemporaryDirectory(prefix="adino_bench_") as out:
        t0, c0 = time.perf_counter(), time.process_time()
        _, bank_s, infer = run_official(off, model, args.category, args.shots, args.preprocessing, data_root,
                                        args.seed, out, save_patch_dists=True, save_tiffs=maps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, bank_s, sum(infer.values()), cpu


def time_ours(det, train, test) -> tuple[float, float, float, float]:
    """(wall seconds, fit seconds, predict-loop seconds, process CPU seconds)."""
    from torch.utils.data import DataLoader

    from adbench.data import SampleDataset, collate, make_loader

    pre, bs = det.preprocess(), det.config.batch_size
    t0, c0 = time.perf_counter(), time.process_time()
    det.fit(make_loader(train, pre, batch_size=bs, train=True, seed=0))
    t1 = time.perf_counter()
    n = 0
    for batch in DataLoader(SampleDataset(test, pre, with_masks=False), batch_size=bs, collate_fn=collate):
        with torch.no_grad():
            n += len(det.predict(batch).scores)
    t2 = time.perf_counter()
    assert n == len(test)
    return t2 - t0, t1 - t0, t2 - t1, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="AnomalyDINO checkout (b3435f0)")
    ap.add_argument("--dinov2", required=True, help="facebookresearch/dinov2 checkout (hubconf.py)")
    ap.add_argument("--data", default="/work/shared/data/mvtec_ad", help="MVTec AD root")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preprocessing", default="agnostic")
    ap.add_argument("--limit", type=int, default=20, help="test images (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-official-maps", action="store_true", help="skip the official+maps variant")
    ap.add_argument("--batch-size", type=int, default=8, help="ours: images per forward pass (paper profile: 8)")
    ap.add_argument("--profile", action="store_true", help="cProfile one more run of ours")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    off = load_official(args.official, args.dinov2)
    model = off.get_model("dinov2_vits14", "cpu", smaller_edge_size=448)
    det = make_detector(random_state(model.model), args.preprocessing, args.seed, batch_size=args.batch_size)
    refs, keys, data_root = select(args.data, args.category, args.shots, args.seed, args.limit or None)
    train, test = adbench_sets(args.data, args.category, refs, keys)
    with torch.inference_mode():  # warm-up, one forward pass each
        model.extract_features(torch.rand(3, 448, 448))
        det.features(torch.rand(1, 3, 448, 448))

    sides = {"official": lambda: time_official(off, model, args, data_root, maps=False),
             "official+maps": lambda: time_official(off, model, args, data_root, maps=True),
             "ours": lambda: time_ours(det, train, test)}
    if args.no_official_maps:
        del sides["official+maps"]
    times = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, run in sides.items():
            times[name].append(run())
            print(f"run {r + 1} {name:14} {times[name][-1][0]:7.2f} s wall, {times[name][-1][3]:7.2f} s CPU",
                  flush=True)

    print(f"\n{args.category}, {args.shots}-shot, {args.preprocessing}, 448 px, {len(test)} test images, "
          f"{torch.get_num_threads()} threads, ours in batches of {args.batch_size}, {args.repeats} runs each (medians)")
    med = {name: [statistics.median(t[i] for t in runs) for i in range(4)] for name, runs in times.items()}
    for name, (wall, a, b, _) in med.items():
        parts = ("fit", "predict loop") if name == "ours" else ("own bank timer", "own inference timers")
        print(f"  {name:14} {wall:7.2f} s   ({parts[0]} {a:.2f} s, {parts[1]} {b:.2f} s; "
              f"{b / len(test) * 1000:.0f} ms/test image)")
    for name in [n for n in med if n != "ours"]:
        print(f"  ratio ours / {name}: {med['ours'][0] / med[name][0]:.3f} wall, "
              f"{med['ours'][3] / med[name][3]:.3f} process CPU time")

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(time_ours, det, train, test)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
