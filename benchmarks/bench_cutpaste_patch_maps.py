"""cutpaste_patch anomaly maps (issue 13): upsampling variants scored on the SAME trained model.

Trains cutpaste_patch once as the harness does (``--profile``, default quick; ``--set``
overrides), computes the raw patch-score grids of every test image once, then maps them with
each upsampling variant and prints image AUROC (grid max and map max), pixel AUROC and AUPRO,
plus where the defects and the normal images' high scores lie (the border band that no patch
centre reaches: ``patch_size / 2`` px). Variants: ``overlap`` (division by the kernel overlap,
before issue 13) and ``none`` (FCDD's sum, the default) at several sigmas.

    OMP_NUM_THREADS=1 python benchmarks/bench_cutpaste_patch_maps.py -d mvtec \
        --data-root ../shared/data/mvtec_ad -c bottle [--set image_size=256]
    OMP_NUM_THREADS=1 python benchmarks/bench_cutpaste_patch_maps.py -d folder \
        --data-root ../shared/data/magnetic_tile
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from adbench.config import parse_set_options, resolve_config
from adbench.data import make_loader
from adbench.detector import RunContext
from adbench.evaluation.metrics import aupro, image_auroc, pixel_auroc
from adbench.registry import DATASETS, METHODS
from adbench.evaluation.streaming import StreamingEvaluator
from adbench.run.worker import seed_everything


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("-c", "--category", default=None)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--sigmas", default="6,8,10,12")
    args = ap.parse_args()

    METHODS.load()
    DATASETS.load()
    from adbench.methods.cutpaste_patch import upsample_scores

    cls = METHODS.get("cutpaste_patch")
    adapter = DATASETS.get(args.dataset)(args.data_root)
    cats = adapter.select([args.category] if args.category else None)
    index = {c: adapter.index(c) for c in cats}
    cfg = resolve_config(cls.Config, cls.PROFILES, args.profile, parse_set_options(args.sets), method="cutpaste_patch")
    seed_everything(0, torch.device("cpu"))
    det = cls(cfg, RunContext(seed=0, profile=args.profile, progress=False, categories={c: index[c].info for c in cats}))
    pre = det.preprocess()
    t0 = time.perf_counter()
    det.fit(make_loader([s for c in cats for s in index[c].train], pre, batch_size=cfg.batch_size, train=True, seed=0))
    fit_s = time.perf_counter() - t0
    grids, masks, labels = [], [], []
    for c in cats:
        for batch in make_loader(index[c].test, pre, batch_size=16, train=False):
            grids.append(det.grid_scores(batch.images))
            masks.append(batch.masks.numpy().astype(bool))
            labels.append(batch.labels.numpy())
    scores, masks, labels = torch.cat(grids), np.concatenate(masks), np.concatenate(labels)
    h, w = masks.shape[1:]
    print(f"{args.dataset}/{','.join(cats)} profile {args.profile} {' '.join(args.sets)}: {h}x{w} px, grid "
          f"{tuple(scores.shape[1:])}, gde {det.gde_mode_used}, fit {fit_s:.0f} s, "
          f"grid-max image AUROC {image_auroc(scores.flatten(1).amax(1).numpy(), labels):.3f}")
    band = np.ones((h, w), bool)
    b = cfg.patch_size // 2
    band[b : h - b, b : w - b] = False
    print(f"{b}-px border band: {band.mean():.2f} of the image, {masks[:, band].sum() / max(masks.sum(), 1):.2f} "
          "of the defect pixels")
    normal = labels == 0
    ring = torch.ones(scores.shape[1:], dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    at_ring = ring.flatten()[scores[torch.from_numpy(normal)].flatten(1).argmax(1)].float().mean()
    print(f"outer ring of cells: {ring.float().mean():.2f} of the grid; it holds the grid maximum of "
          f"{at_ring:.2f} of the normal test images; largest grid score {scores.max():.3g}")
    variants = [("overlap", 8.0)] + [("none", float(s)) for s in args.sigmas.split(",")]
    print(f"{'upsample_norm':>13} {'sigma':>5} {'img(map max)':>12} {'pixel AUROC':>11} {'AUPRO':>6} "
          f"{'top-1% normal px in band':>24}   streamed as the runner does: pixel AUROC / AUPRO (error bound)")
    for norm, sigma in variants:
        maps = upsample_scores(scores, cfg.patch_size, cfg.test_stride, (h, w), sigma, norm).numpy()
        top = maps[normal] > np.quantile(maps[normal], 0.99)
        ev = StreamingEvaluator(fpr_limit=0.3)
        for i in range(0, len(maps), 16):
            ev.update(scores=maps[i : i + 16].reshape(len(maps[i : i + 16]), -1).max(1), labels=labels[i : i + 16],
                      maps=maps[i : i + 16], masks=masks[i : i + 16])
        res = ev.compute()
        streamed = (f"{res.values['pixel_auroc']:.3f} / {res.values['aupro']:.3f} "
                    f"(+-{res.binning['pixel_auroc_max_error']:.3f} / {res.binning['aupro_max_error']:.3f})")
        print(f"{norm:>13} {sigma:5.0f} {image_auroc(maps.reshape(len(maps), -1).max(1), labels):12.3f} "
              f"{pixel_auroc(maps, masks):11.3f} {aupro(maps, masks):6.3f} {top[:, band].sum() / top.sum():24.2f}   "
              f"{streamed}")


if __name__ == "__main__":
    main()
