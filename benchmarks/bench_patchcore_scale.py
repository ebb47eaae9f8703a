"""PatchCore at MIAD scale: 10,000 generated training images, lite0, 224 px, 1 % coreset.

The MIAD benchmark (seed 004) fit only 2,000 training images per category on a 32 GB GPU and
randomly subsampled the rest away. This benchmark fits PatchCore on ``--n`` (default 10,000)
generated 224x224 images with every patch a coreset candidate (784 per image: 7.84 M for 10k)
and prints the grid, the coreset ratio and size, peak RSS and wall time. Embeddings stream to a
float16 file in a scratch folder; the coreset is the two-level greedy (chunks of
``coreset_chunk`` patches, see adbench/components/coreset.py), so no buffer grows with N
except the file on disk and the chunk-level picks.

Images are generated on the fly (no disk): smooth random colour fields plus stripes with a random
phase and noise, deterministic per index, so patches are varied like real textures. A few
test images (half with a bright blob) are scored at the end to show the bank works.

    python benchmarks/bench_patchcore_scale.py                # 10,000 images (long on 2 cores)
    python benchmarks/bench_patchcore_scale.py --n 1000       # smaller; prints extrapolation
Weights: $ADBENCH_WEIGHTS_DIR/tf_efficientnet_lite0.pth when set, else random (tag printed).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def generated_batches(n: int, batch: int, size: int = 224, seed: int = 0, anomalies: bool = False):
    from adbench.data import Batch

    for start in range(0, n, batch):
        imgs = []
        labels = []
        for i in range(start, min(n, start + batch)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            field = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic", align_corners=False)
            phase = torch.rand(1, generator=g) * 6.28
            freq = 0.15 + 0.1 * torch.rand(1, generator=g)
            x = torch.arange(size).float()
            stripes = 0.5 + 0.5 * torch.sin(freq * x.view(1, -1) + phase + 0.3 * x.view(-1, 1) * torch.rand(1, generator=g))
            img = 0.6 * field[0] + 0.3 * stripes + 0.05 * torch.randn(3, size, size, generator=g)
            label = int(anomalies and i % 2 == 1)
            if label:
                cy, cx = torch.randint(30, size - 30, (2,), generator=g).tolist()
                yy, xx = torch.meshgrid(x, x, indexing="ij")
                img = img + 0.8 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0)
            imgs.append(img.clamp(0, 1))
            labels.append(label)
        k = len(imgs)
        yield Batch(images=torch.stack(imgs), labels=torch.tensor(labels), paths=[""] * k, categories=["gen"] * k, defect_types=["good"] * k)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=100_000, help="coreset_chunk (patches)")
    ap.add_argument("--mode", default="two_level", help="coreset_mode; two_level is what auto picks at 10k images")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from adbench.config import resolve_config
    from adbench.detector import RunContext
    from adbench.registry import METHODS

    cls = METHODS.get("patchcore")
    weights = None if os.environ.get("ADBENCH_WEIGHTS_DIR") else "random"
    overrides = {"image_size": args.size, "crop_size": None, "coreset_ratio": args.ratio, "coreset_chunk": args.chunk, "coreset_mode": args.mode}
    config = resolve_config(cls.Config, cls.PROFILES, "quick", overrides, method="patchcore")
    load = os.getloadavg()
    print(f"host load before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores shared; timings inflated under load)", flush=True)
    with tempfile.TemporaryDirectory(prefix="pc-scale-") as workdir:
        torch.manual_seed(0)
        det = cls(config, RunContext(seed=0, weights=weights, profile="quick", workdir=workdir, progress=sys.stderr.isatty()))
        t0 = time.perf_counter()
        c0 = time.process_time()
        det.fit(generated_batches(args.n, args.batch, args.size))
        fit_s = time.perf_counter() - t0
        fit_cpu = time.process_time() - c0
        facts = det.record_extras()
        scores, labels = [], []
        for b in generated_batches(40, 20, args.size, seed=7, anomalies=True):
            p = det.predict(b)
            scores.append(p.scores)
            labels.append(b.labels)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy())
    load = os.getloadavg()
    print(f"weights: {det.weights_tag()}  backbone: {config.backbone}  input {args.size}x{args.size}")
    print(f"images: {args.n}  grid: {facts['grid'][0]}x{facts['grid'][1]}  candidates (every patch): {facts['candidates']:,}")
    print(f"coreset: ratio {facts['coreset_ratio']}  mode {facts['coreset_mode']}  bank {facts['bank_size']:,} x {facts['embedding_dim']}")
    print(f"embeddings spilled to float16 file: {facts['embeddings_spilled_to_disk']}")
    print(f"fit wall: {fit_s:.1f} s (features {facts['seconds_features']} s, coreset {facts['seconds_coreset']} s); fit CPU time {fit_cpu:.1f} s")
    print(f"peak RSS: {peak_rss_gib():.2f} GiB")
    print(f"sanity: image AUROC on 40 generated test images (blob anomalies): {auc:.3f}")
    print(f"host load after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.n < 10_000:
        f = 10_000 / args.n
        print(f"EXTRAPOLATION to 10,000 images (linear in N for features and chunk-level coreset; "
              f"not measured): features ~{facts['seconds_features'] * f:.0f} s, fit ~{fit_s * f:.0f} s wall at this load; "
              f"the final coreset level grows ~quadratically (k x union), so treat the coreset part as a lower bound")


if __name__ == "__main__":
    main()
