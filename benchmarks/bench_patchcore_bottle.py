"""Time the whole PatchCore job on MVTec bottle (209 train + 83 test images), lite0, quick.

Fits on the training images and scores every test image, as ``adbench run`` does, and prints
image and pixel AUROC, wall and CPU seconds (features / coreset / scoring), the bank size and
peak RSS. Target (issue 3): whole job < 2 minutes on 2 CPU cores, peak RSS < 2 GiB. For scale:
anomalib 2.7's PatchCore on the same data, backbone and weights took 53 minutes and 19 GiB
for image AUROC 1.000 / pixel AUROC 0.9875.

The box is shared: the load average is printed next to the timings, and CPU time (which
contention inflates far less than wall time) is printed too.

    python benchmarks/bench_patchcore_bottle.py [--set key=value ...] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description="PatchCore bottle job: time, memory, accuracy")
    ap.add_argument("--shared", default=os.environ.get("ADBENCH_SHARED", str(Path(__file__).resolve().parents[2] / "shared")))
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("ADBENCH_WEIGHTS_DIR", str(Path(args.shared) / "weights"))

    from adbench.config import parse_set_options, resolve_config
    from adbench.data import make_loader
    from adbench.detector import RunContext
    from adbench.evaluation.metrics import image_auroc, pixel_auroc
    from adbench.registry import DATASETS, METHODS

    load0 = os.getloadavg()
    t_start, c_start = time.perf_counter(), time.process_time()
    ds = DATASETS.get("mvtec")(Path(args.shared) / "data" / "mvtec_ad")
    index = ds.index("bottle")
    cls = METHODS.get("patchcore")
    config = resolve_config(cls.Config, cls.PROFILES, args.profile, parse_set_options(args.sets), method="patchcore")
    torch.manual_seed(0)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pc-bottle-") as workdir:
        det = cls(config, RunContext(seed=0, profile=args.profile, workdir=workdir))
        pre = det.preprocess()
        t_fit, c_fit = time.perf_counter(), time.process_time()
        det.fit(make_loader(index.train, pre, batch_size=config.batch_size, train=True, seed=0))
        t_pred, c_pred = time.perf_counter(), time.process_time()
        scores, labels, maps, masks = [], [], [], []
        for batch in make_loader(index.test, pre, batch_size=16, train=False):
            s, m = det.predict(batch).numpy()
            scores.append(s)
            labels.append(batch.labels.numpy())
            maps.append(m)
            masks.append(batch.masks.numpy())
        t_end, c_end = time.perf_counter(), time.process_time()
    img = image_auroc(np.concatenate(scores), np.concatenate(labels))
    pix = pixel_auroc(np.concatenate(maps), np.concatenate(masks))
    facts = det.record_extras()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    load1 = os.getloadavg()
    print(f"patchcore {args.profile} {config.backbone} ({det.weights_tag()}) {pre.describe()}  sets={args.sets}")
    print(f"train {len(index.train)}  test {len(index.test)}  grid {facts['grid']}  candidates {facts['candidates']:,}  "
          f"bank {facts['bank_size']:,} ({facts['coreset_ratio']:.0%}, {facts['coreset_mode']})")
    print(f"image AUROC {img:.4f}   pixel AUROC {pix:.4f}")
    print(f"wall: total {t_end - t_start:.1f} s = setup {t_fit - t_start:.1f} + fit {t_pred - t_fit:.1f} "
          f"(features {facts['seconds_features']}, coreset {facts['seconds_coreset']}) + predict {t_end - t_pred:.1f}")
    print(f"CPU time: total {c_end - c_start:.1f} s (fit {c_pred - c_fit:.1f}, predict {c_end - c_pred:.1f}); torch threads {args.threads}")
    print(f"peak RSS {rss:.2f} GiB")
    print(f"load average before {load0[0]:.1f}, after {load1[0]:.1f} (2 shared cores)")
    print(f"anomalib 2.7 reference: 53 min, 19 GiB, image 1.000 / pixel 0.9875 -> wall ratio {(t_end - t_start) / (53 * 60):.3f}")


if __name__ == "__main__":
    main()
