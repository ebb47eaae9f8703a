"""adbench's ``anomalydino`` against the official AnomalyDINO code, number for number.

What. Both sides get the same fully random DINOv2 ViT-S/14 (every parameter drawn once:
LayerScale and LayerNorm gains ~ N(1, 0.1), the rest ~ N(0, 0.02); random, not pretrained,
because no pretrained weights can be downloaded here and a random net exercises every block),
the same reference image(s) and the same test images, and the script compares:

1. features, float64: DINOv2 tokens of the hub model (``get_intermediate_layers(x)[0]``) and of
   adbench's timm model (``DinoV2.patch_tokens``) on the first reference at 448x448 and on a
   random 448x672 input (VisA's official geometry), tolerance 1e-10; plus the official input
   tensor (``prepare_image``) against adbench's preprocessing of the same file (float32);
2. float32, end to end: each test image's 1-NN patch distances, image scores, and maps: the
   official map is ``dists2map`` (resize + Gaussian sigma 4) at the *original* resolution (what
   ``save_tiffs=True`` writes); adbench evaluates maps at the job's geometry (448x448, sigma
   scaled by 448/original). Those two are not comparable pixel for pixel (blur-then-downsample
   differs from downsample-then-blur), so the PASS/FAIL map check applies adbench's map function
   (``anomaly_map``) to adbench's distances at the original size and sigma 4, and the 448 maps
   are compared with the official ones downsampled (INTER_AREA) for information only.
   Tolerance: |ours - official| <= 1e-4 * (|official| + max|official|) (rtol 1e-4, elementwise
   and on the array's scale: a float32 ``1 - cos`` has an absolute error ~1e-7 at any size).

References: the official few-shot pick ``sorted(train/good)[seed*k:(seed+1)*k]`` (detection.py:67-72),
fed to adbench as its training set. ``--limit N``: N test images, taken round-robin over the defect
folders in sorted order (so a short run has good and defective images), given to the official code
as a folder of symbolic links with the same layout.

Getting the official code (no network needed; the mirrors are in this workplace)::

    mkdir -p DIR/AnomalyDINO DIR/dinov2
    git -C /work/.mirror/dammsi+AnomalyDINO/repo archive HEAD | tar -x -C DIR/AnomalyDINO      # b3435f0
    git -C /work/.mirror/facebookresearch+dinov2/repo archive HEAD | tar -x -C DIR/dinov2       # b8931f7
    python benchmarks/compare_official_anomalydino.py --official DIR/AnomalyDINO --dinov2 DIR/dinov2

Patched in the official code's process, nothing else (``load_official``), so that it runs
offline on a CPU: ``torch.hub.load('facebookresearch/dinov2', name)`` -> the local dinov2 copy
(``source='local'``, ``pretrained=False``: the random weights are loaded afterwards);
``torch.cuda.synchronize`` -> no-op (it is only called to time inference on a GPU);
``faiss_on_cpu=True`` (an argument of ``run_anomaly_detection``; faiss-gpu is not installed);
a no-op ``tifffile`` module, installed or not (imported by detection.py, used only with
``save_tiffs=True``: the maps are computed, not written).
"""
from __future__ import annotations

import argparse
import atexit
import copy
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

RTOL = 1e-4  # float32 end to end
TOL64 = 1e-10  # float64 features


def load_official(official: str, dinov2: str) -> types.SimpleNamespace:
    """Import the official code with the offline patches of the module docstring."""
    sys.path.insert(0, str(Path(official).resolve()))
    stub = types.ModuleType("tifffile")
    stub.imwrite = lambda *a, **k: None
    sys.modules["tifffile"] = stub
    torch.cuda.synchronize = lambda *a, **k: None
    hub_load, local = torch.hub.load, str(Path(dinov2).resolve())
    torch.hub.load = lambda repo, name, *a, **k: hub_load(local, name, source="local", pretrained=False)
    from src.backbones import get_model
    from src.detection import run_anomaly_detection
    from src.utils import dists2map, get_dataset_info

    return types.SimpleNamespace(get_model=get_model, run=run_anomaly_detection, dists2map=dists2map,
                                 dataset_info=get_dataset_info)


def random_state(model: torch.nn.Module, seed: int = 0) -> dict:
    """Draw every float tensor of the hub model's state dict (module docstring); returns a copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                gain = "gamma" in name or (value.ndim == 1 and "norm" in name and name.endswith("weight"))
                value.copy_((1.0 if gain else 0.0) + (0.1 if gain else 0.02) * torch.randn(value.shape, generator=g))
    return {k: v.clone() for k, v in model.state_dict().items()}


def make_detector(state: dict, preprocessing: str, seed: int, **overrides):
    """adbench's paper-profile detector (plus ``overrides``) with the hub state dict converted by
    timm's DINOv2 filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from adbench.config import resolve_config
    from adbench.detector import RunContext
    from adbench.registry import METHODS

    cls = METHODS.get("anomalydino")
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper", {"preprocessing": preprocessing, **overrides},
                         method="anomalydino")
    det = cls(cfg, RunContext(seed=seed, weights="random", profile="paper"))
    det.backbone.model.load_state_dict(checkpoint_filter_fn(state, det.backbone.model), strict=True)
    return det


def key(path) -> str:
    """``<defect>/<file>``, the official score key."""
    return f"{Path(path).parent.name}/{Path(path).name}"


def select(root: str, category: str, shots: int, seed: int, limit: int | None):
    """(reference file names, test keys ``<defect>/<file>``, data root for the official code:
    ``root`` itself, or a temporary folder of links holding the ``limit`` subset, removed at exit)."""
    base = Path(root) / category
    refs = sorted(p.name for p in (base / "train" / "good").iterdir())[seed * shots:(seed + 1) * shots]
    folders = {d.name: sorted(p.name for p in d.iterdir()) for d in sorted((base / "test").iterdir())}
    keys = [f"{d}/{n}" for d, names in folders.items() for n in names]
    if not limit or limit >= len(keys):
        return refs, keys, root
    rounds = [[f"{d}/{n}" for n in names] for d, names in folders.items()]
    keys = [k for i in range(max(map(len, rounds))) for r in rounds if i < len(r) for k in [r[i]]][:limit]
    tmp = Path(tempfile.mkdtemp(prefix="adino_subset_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    (tmp / category / "train").mkdir(parents=True)
    (tmp / category / "train" / "good").symlink_to((base / "train" / "good").resolve())
    for d in folders:
        (tmp / category / "test" / d).mkdir(parents=True)
    for k in keys:
        (tmp / category / "test" / k).symlink_to((base / "test" / k).resolve())
    return refs, keys, str(tmp)


def adbench_sets(root: str, category: str, refs: list[str], keys: list[str]):
    from adbench.registry import DATASETS

    index = DATASETS.get("mvtec")(root).index(category)
    train = sorted((s for s in index.train if s.path.name in refs), key=lambda s: s.path.name)
    test = [s for s in index.test if key(s.path) in set(keys)]
    assert len(train) == len(refs) and len(test) == len(keys), "adbench's index misses some files"
    return train, test


def run_official(off, model, category: str, shots: int, preprocessing: str, data_root: str, seed: int, out: str,
                 save_patch_dists: bool = True, save_tiffs: bool = False):
    """``run_anomaly_detection`` as run_anomalydino.py calls it (faiss on the CPU, no example plots)."""
    _, anomalies, masking, rotation = off.dataset_info("MVTec", preprocessing)
    return off.run(model, category, data_root=data_root, n_ref_samples=shots, object_anomalies=copy.deepcopy(anomalies),
                   plots_dir=out, save_examples=False, knn_metric="L2_normalized", knn_neighbors=1, faiss_on_cpu=True,
                   masking=masking[category], mask_ref_images=False, rotation=rotation[category], seed=seed,
                   save_patch_dists=save_patch_dists, save_tiffs=save_tiffs)


def run_adbench(det, train, test):
    """fit + predict through adbench's loaders; returns {key: (score, patch distances, map)}."""
    from adbench.data import make_loader

    pre, bs = det.preprocess(), det.config.batch_size
    det.fit(make_loader(train, pre, batch_size=bs, train=True, seed=0))
    captured, real = [], det.patch_distances
    det.patch_distances = lambda *a, **k: captured.append(real(*a, **k)) or captured[-1]
    out = {}
    for batch in make_loader(test, pre, batch_size=bs, train=False):
        scores, maps = det.predict(batch).numpy()
        for p, s, d, m in zip(batch.paths, scores, captured.pop(), maps):
            out[key(p)] = (float(s), d, m)
    return out


class Report:
    def __init__(self):
        self.failed = []

    def check(self, name: str, ours, official, tol: float, absolute: bool = False) -> None:
        ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
        diff = np.abs(ours - official)
        scale = np.abs(official).max()
        big = np.abs(official) > 0.01 * scale  # relative error of near-zero entries says nothing
        rel = (diff[big] / np.abs(official[big])).max(initial=0.0)
        ok = diff.max() <= tol if absolute else bool((diff <= tol * (np.abs(official) + scale)).all())
        print(f"{'PASS' if ok else 'FAIL':4}  {name:44} max|diff| {diff.max():.3g}  max rel (>1% of max) {rel:.3g}  max|official| {scale:.3g}")
        if not ok:
            self.failed.append(name)


def compare_features(report: Report, off_model, det, image: torch.Tensor, official_input: torch.Tensor) -> None:
    ref, ours = copy.deepcopy(off_model).double(), copy.deepcopy(det.backbone).double()
    h, w = official_input.shape[-2:]
    ours_input = ((image[None] - det.backbone.mean) / det.backbone.std)[..., :h, :w]
    report.check("input tensor 448 (float32, vs prepare_image)", ours_input, official_input[None], RTOL)
    rng = torch.Generator().manual_seed(1)
    for x in (image[None].double(), torch.rand(1, 3, 448, 672, generator=rng, dtype=torch.float64)):
        with torch.no_grad():
            theirs = ref.get_intermediate_layers(ours.crop((x - ours.mean) / ours.std))[0]
            mine, grid = ours.patch_tokens(x)
        report.check(f"DINOv2 tokens float64 {tuple(x.shape[-2:])} grid {grid}", mine, theirs, TOL64, absolute=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="AnomalyDINO checkout (b3435f0)")
    ap.add_argument("--dinov2", required=True, help="facebookresearch/dinov2 checkout (hubconf.py)")
    ap.add_argument("--data", default="/work/shared/data/mvtec_ad", help="MVTec AD root")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="official few-shot seed (which block of references)")
    ap.add_argument("--preprocessing", default="agnostic")
    ap.add_argument("--limit", type=int, default=None, help="use N test images (round-robin over defect types)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2
    from PIL import Image

    from adbench.methods.anomalydino import anomaly_map

    off = load_official(args.official, args.dinov2)
    model = off.get_model("dinov2_vits14", "cpu", smaller_edge_size=448)
    state = random_state(model.model)
    det = make_detector(state, args.preprocessing, args.seed)
    refs, keys, data_root = select(args.data, args.category, args.shots, args.seed, args.limit)
    train, test = adbench_sets(args.data, args.category, refs, keys)
    print(f"{args.category}, {args.shots}-shot seed {args.seed} (references {refs}), preprocessing "
          f"{args.preprocessing}, {len(test)} test images, {torch.get_num_threads()} torch threads")

    report = Report()
    first = Path(args.data) / args.category / "train" / "good" / refs[0]
    rgb = cv2.cvtColor(cv2.imread(str(first), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    compare_features(report, model.model, det, det.preprocess().image(Image.open(first).convert("RGB")),
                     model.prepare_image(rgb)[0])

    with tempfile.TemporaryDirectory(prefix="adino_official_") as out:
        scores, _, _ = run_official(off, model, args.category, args.shots, args.preprocessing, data_root, args.seed, out)
        grids = {k: np.load(f"{out}/anomaly_maps/seed={args.seed}/{args.category}/test/{k.rsplit('.', 1)[0]}.npy")
                 for k in keys}
    ours = run_adbench(det, train, test)
    assert sorted(scores) == sorted(ours) == sorted(keys), "the two sides scored different images"

    report.check("patch distances (float32)", [ours[k][1] for k in keys], [grids[k].reshape(-1) for k in keys], RTOL)
    report.check("image scores (mean of top 1 %)", [ours[k][0] for k in keys], [scores[k] for k in keys], RTOL)
    worst, info, corr = 0.0, 0.0, []
    for k in keys:
        shape = cv2.imread(str(Path(args.data) / args.category / "test" / k)).shape[:2]
        theirs = off.dists2map(grids[k], shape)
        mine = anomaly_map(ours[k][1].reshape(grids[k].shape), shape, (4.0, 4.0))
        worst = max(worst, np.abs(mine - theirs).max() / (2 * np.abs(theirs).max() or 1.0))  # all masked: 0
        small = cv2.resize(theirs, ours[k][2].shape[::-1], interpolation=cv2.INTER_AREA)
        info = max(info, np.abs(ours[k][2] - small).max() / (np.abs(small).max() or 1.0))
        corr.append(np.corrcoef(ours[k][2].reshape(-1), small.reshape(-1))[0, 1])
    ok = worst <= RTOL
    print(f"{'PASS' if ok else 'FAIL':4}  {'maps at original size, sigma 4 (dists2map)':44} "
          f"max|diff| / (2 max|official|) {worst:.3g}")
    report.failed += [] if ok else ["maps"]
    print(f"info  {'maps at 448 vs official downsampled':44} max|diff| / max|official| {info:.3g}, "
          f"pixel correlation min {min(corr):.6f}")

    from sklearn.metrics import roc_auc_score

    labels = [0 if k.startswith("good/") else 1 for k in keys]
    if 0 < sum(labels) < len(labels):
        print(f"image AUROC  official {roc_auc_score(labels, [scores[k] for k in keys]):.6f}  "
              f"adbench {roc_auc_score(labels, [ours[k][0] for k in keys]):.6f}  (random weights)")
    print(f"bank size {det.record_extras()['bank_size']}; test patches kept {det.record_extras().get('test_patches_kept')}")
    print("FAIL: " + ", ".join(report.failed) if report.failed else "PASS: all checks")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
