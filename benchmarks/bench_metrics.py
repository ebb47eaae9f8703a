"""Streaming vs exact pixel metrics on >= 5e7 pixels: time, peak memory, and agreement.

Why this exists: the runner evaluates with ``StreamingEvaluator`` so that memory does not grow
with the test set. This shows, in one run, what that buys and what it costs in accuracy:

* streaming pixel AUROC + AUPRO (one pass over batches, histogram state only) against
* scikit-learn ``roc_auc_score`` and the exact ``adbench.evaluation.metrics.aupro``, which need every pixel
  in memory at once (the input arrays alone are printed separately from their working memory).

Maps are PatchCore-like: smooth noise around an offset, raised over blurred defect regions,
with a mild drift of scale across batches so that the evaluator's range has to grow. Each batch
is generated from its own seed, so the exact side sees the very same pixels.

Memory is measured with tracemalloc (NumPy reports its buffers to it), as the peak above what
was allocated just before the measured call; ru_maxrss of the process is printed as a check.
Timings on a shared machine are inflated by other load: the load average is printed alongside.

Usage: python benchmarks/bench_metrics.py [--images 200] [--size 512] [--batch 10]
"""
from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from adbench.evaluation.metrics import aupro
from adbench.evaluation.streaming import StreamingEvaluator

MB = 2.0 ** 20


def make_batch(index: int, n: int, size: int, n_batches: int):
    """One batch of maps/masks/labels, deterministic in ``index``."""
    rng = np.random.default_rng(1000 + index)
    masks = np.zeros((n, size, size), dtype=bool)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    yy, xx = np.ogrid[:size, :size]
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(3, size // 8, 2)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    maps = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), 4) * 4
        signal = ndimage.gaussian_filter(masks[i].astype(np.float32), 4)
        maps[i] = 3.0 + noise + 1.5 * signal
    maps *= 1.0 + index / n_batches  # drifting scale: the histogram range must grow
    return maps, masks, labels


def measure(func):
    """(result, (wall s, CPU s), peak bytes allocated above the level before the call).

    CPU seconds of this process are printed next to wall seconds because on a shared machine
    the wall time mostly measures the other users' load.
    """
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    out = func()
    seconds = np.array([time.perf_counter() - t0, time.process_time() - c0])
    return out, seconds, tracemalloc.get_traced_memory()[1] - before


def fmt(sec) -> str:
    return f"{sec[0]:7.2f} s wall / {sec[1]:7.2f} s CPU"


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    n_batches = -(-args.images // args.batch)
    sizes = [min(args.batch, args.images - b * args.batch) for b in range(n_batches)]
    n_pixels = args.images * args.size ** 2
    print(f"load average before: {os.getloadavg()}")
    print(f"{args.images} maps of {args.size}x{args.size} = {n_pixels:.3e} pixels, "
          f"batches of {args.batch}")
    tracemalloc.start()

    # ---- streaming: one pass, batch by batch
    ev = StreamingEvaluator(fpr_limit=0.3)
    t_update, peak_update = np.zeros(2), 0
    for b, n in enumerate(sizes):
        maps, masks, labels = make_batch(b, n, args.size, n_batches)
        _, sec, peak = measure(lambda: ev.update(scores=maps.reshape(n, -1).max(1), labels=labels,
                                                 maps=maps, masks=masks))
        t_update += sec
        peak_update = max(peak_update, peak)
        del maps, masks
    result, t_compute, peak_compute = measure(ev.compute)
    state = sum(a.nbytes for a in ev._hist.arrays)
    batch_bytes = args.batch * args.size ** 2 * 5  # float32 map + bool mask
    rss_stream = maxrss_mb()

    # ---- exact: every pixel in memory
    parts = [make_batch(b, n, args.size, n_batches) for b, n in enumerate(sizes)]
    all_maps = np.concatenate([p[0] for p in parts])
    all_masks = np.concatenate([p[1] for p in parts])
    del parts
    input_bytes = all_maps.nbytes + all_masks.nbytes
    exact_auroc, t_sk, peak_sk = measure(lambda: roc_auc_score(all_masks.ravel(), all_maps.ravel()))
    exact_aupro, t_pro, peak_pro = measure(lambda: aupro(all_maps, all_masks, fpr_limit=0.3))
    tracemalloc.stop()

    s_auroc, s_aupro = result.values["pixel_auroc"], result.values["aupro"]
    print(f"anomalous pixels {result.counts['n_anomalous_pixels']}, regions "
          f"{result.counts['n_regions']}, histogram range grew to "
          f"[{result.binning['lo']:.3f}, {result.binning['lo'] + result.binning['n_bins'] * result.binning['bin_width']:.3f}]")
    print()
    print("streaming (pixel AUROC + AUPRO + AP + F1 together, one pass)")
    t_stream = t_update + t_compute
    print(f"  update total {fmt(t_update)}   compute {fmt(t_compute)}   "
          f"= {n_pixels / t_stream[1] / 1e6:.1f} Mpixel per CPU second")
    print(f"  state (histogram) {state / MB:8.2f} MB; peak working memory of one update "
          f"{peak_update / MB:.1f} MB (a batch's own arrays are {batch_bytes / MB:.1f} MB), "
          f"of compute {peak_compute / MB:.1f} MB")
    print("exact (all pixels in memory: inputs alone "
          f"{input_bytes / MB:.1f} MB)")
    print(f"  sklearn roc_auc_score {fmt(t_sk)}   peak working memory {peak_sk / MB:8.1f} MB")
    print(f"  exact aupro           {fmt(t_pro)}   peak working memory {peak_pro / MB:8.1f} MB")
    print()
    print(f"{'metric':12s} {'streaming':>12s} {'exact':>12s} {'|diff|':>10s} {'bound':>10s} "
          f"{'time ratio':>11s} {'mem ratio':>10s}")
    stream_mem = peak_update + state
    for name, s, e, bound, t_exact, m_exact in [
        ("pixel_auroc", s_auroc, exact_auroc, result.binning["pixel_auroc_max_error"], t_sk,
         peak_sk + input_bytes),
        ("aupro", s_aupro, exact_aupro, result.binning["aupro_max_error"], t_pro,
         peak_pro + input_bytes),
    ]:
        print(f"{name:12s} {s:12.6f} {e:12.6f} {abs(s - e):10.2e} {bound:10.2e} "
              f"{t_exact[1] / t_stream[1]:10.2f}x {m_exact / stream_mem:9.1f}x")
    print("(time ratio = CPU s of exact one metric / CPU s of streaming all metrics; mem ratio = exact "
          "(inputs + working) / streaming (state + peak update incl. its batch temporaries))")
    print(f"process ru_maxrss: after streaming {rss_stream:.0f} MB, after exact {maxrss_mb():.0f} MB")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
