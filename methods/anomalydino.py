"""AnomalyDINO (Damm et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection with
DINOv2", arXiv 2405.14529, WACV 2025): 1-NN distance of DINOv2 patch features to a memory bank
of (rotated) reference patches.

Every value follows the official code, github.com/dammsi/AnomalyDINO at commit ``b3435f0``
(``run_anomalydino.py`` and ``src/``), cited as file:line. The paper's own text (tables,
appendix) was not available while writing this; where only the code is cited, the code is what
produced the paper's numbers (the README's reproduction commands run it with its defaults).

1. Backbone. DINOv2 ViT-S/14, LVD-142M weights (``--model_name dinov2_vits14``,
   run_anomalydino.py:32; ``torch.hub.load('facebookresearch/dinov2', ...)``, backbones.py:95),
   here timm's ``vit_small_patch14_dinov2.lvd142m`` with DINOv2's position-embedding resize
   (``adbench/components/dinov2.py``: offset 0.1, bicubic, no antialias, as the hub model).
   Features: the last block's patch tokens after the final LayerNorm, class token dropped
   (``get_intermediate_layers(x)[0]``, backbones.py:132), 384-d, fp32 (backbones.py:13, 127-130).
2. Input. Shorter side resized to 448 (``--resolution``, run_anomalydino.py:37) with PIL bicubic,
   antialiased (torchvision ``Resize`` on a PIL image, backbones.py:102-106), ImageNet mean/std,
   then cropped from the top left to a multiple of 14 (backbones.py:116-122): 448 -> 32x32 patches.
3. Memory bank. Every reference (training) image, rotated by 0, 45, ..., 315 degrees at its
   original resolution when the category's row of the preprocessing table says so
   (``preprocessing``, run_anomalydino.py:35, default ``agnostic``: every MVTec and VisA category
   rotated; src/utils.py:72-185; detection.py:83-89); all their patches (reference images are
   not masked, ``--mask_ref_images`` default False, run_anomalydino.py:44, detection.py:96),
   L2-normalised (detection.py:117-118). Table, mask and rotation: ``_anomalydino_preprocessing.py``.
4. Test patches. Test images of the categories the table masks (MVTec capsule, hazelnut, pill,
   screw, toothbrush; every VisA category) get a zero-shot foreground mask: first principal
   component of the image's own patch features > 10, sign chosen by the image centre, dilated and
   closed (backbones.py:159-174; detection.py:150-154). Each kept patch's distance is the squared
   L2 distance of the L2-normalised feature to its nearest bank entry, halved: 1 - cos
   (``knn_metric=L2_normalized``, ``k_neighbors=1``, run_anomalydino.py:38-39; faiss
   ``IndexFlatL2`` returns squared distances, ``distances / 2``, detection.py:106-118, 165-173;
   with k > 1 the squared distances are averaged first). Masked patches get 0 (detection.py:175-177).
   Search: exact, ``adbench/components/knn.py`` (faiss on the CPU, torch or faiss-gpu on a GPU).
5. Image score: mean of the ``int(0.01 n)`` largest patch distances over the full grid of n
   patches, masked zeros included (the max when that is 0): ``mean_top1p``, post_eval.py:293-297,
   detection.py:183; 10 of 1024 patches at 448 px.
6. Map: the distance grid resized with ``cv2.resize(..., INTER_LINEAR)`` to the image, then
   ``scipy.ndimage.gaussian_filter(sigma=4)`` (utils.py:25-30). The official map is computed at
   the *original* image size, so sigma 4 is in original pixels; the harness evaluates maps at the
   job's geometry (448x448 here), so the sigma is scaled per axis by (geometry size / original
   size), the original size read from the image file's header (4 * 448/900 = 1.99 for MVTec
   bottle). When a batch's path is not a file (a detector used outside the harness) the batch
   image counts as the original (sigma 4). The grid is stretched over the whole image, the
   cropped-off rows and columns included, as in the official code (no crop at 448).

Profiles. ``paper``: the above (ViT-S/14, 448, ``agnostic``). ``quick``: the same architecture
on a CPU budget: 224 px (16x16 patches, top-2 score), ``preprocessing=masking_only`` (the mask
table, no rotation: 8x fewer reference forward passes); like every ``quick*`` profile it falls
back to random weights with a warning when ``vit_small_patch14_dinov2.lvd142m`` is not available.
Random DINOv2 weights give features close to a random linear projection of each patch (timm's
LayerScale starts at 1e-5; ``components/dinov2.py``), and the masking threshold 10 is tied to the
pretrained features' scale: with random weights the masks mean nothing (the record says so).

Few-shot. ``--shots K`` is AnomalyDINO's setting (any K >= 1; one reference image works). The
official code draws references deterministically: consecutive blocks of the sorted file list,
``sorted(train/good)[seed*K:(seed+1)*K]`` for seeds 0, 1, 2 (detection.py:67-72;
run_anomalydino.py:75-78), so its K-shot sets are neither random nor nested; adbench draws a
nested random set per seed (``adbench/data/shots.py``). Per-seed numbers are therefore not the
paper's draws, only the same protocol in distribution. Full-shot (no ``--shots``) uses every
training image, rotated too under ``agnostic`` (the code has no shot-dependent switch).

Checkpoint. The finished memory bank (and the record's bank facts) is the job's checkpoint,
phase ``memory_bank`` (as PatchCore's): a job killed while it scores, or rerun from a kept final
checkpoint, restores the bank and embeds no reference image again. Its size is the bank's:
n_patches x 384 x 4 bytes, 12.6 MB per reference image at 448 px with 8 rotations (a full-shot
category of a few hundred images: a few GB, written once).

Deviations, all documented choices:
* Geometry. The harness resizes to a square (``Preprocess``, here PIL bicubic as the official
  ``Resize``). For square originals (MVTec AD, the synthetic set) that is exactly the official
  shorter-side resize; for other aspect ratios (VisA's 1500x1000 -> official 672x448) the image
  is squashed to 448x448 instead, so VisA runs see a different aspect ratio and 1024 instead of
  1536 patches (top 10 instead of 15).
* Rotation. The harness's training images are already resized, so references are re-read
  from their files (``load_rgb``: PIL decoding, the official code decodes with OpenCV; the same
  pixels for PNG, possibly not bit-identical for JPEG), rotated at their original resolution and
  resized by the job's geometry. A batch whose paths are not files (outside the harness) is
  rotated at the batch geometry instead; the record says which (``rotation_source``).
* The PCA of the mask is seeded with the job seed (the official call is unseeded).
* Inference is batched (``batch_size``); the official code embeds one image at a time. Same
  features up to float rounding.
* Unified protocol: one bank over several categories; each test image is masked by its own
  category's row (the official code runs one category at a time).
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.dinov2 import RANDOM_WEIGHTS_NOTE, DinoV2
from adbench.components.knn import NearestNeighbours
from adbench.methods._anomalydino_preprocessing import (ANGLES, MODES, NO_MASK_MODES, category_policy,
                                                        foreground_mask, rotate)
from adbench.config import MethodConfig
from adbench.data import Batch, Preprocess, image_size_of, load_rgb
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError, DataError, FewShotError
from adbench.precision import full
from adbench.registry import register_method

Preprocessing = Literal[MODES]  # type: ignore[valid-type]

#: fraction of the grid whose largest distances make the image score (post_eval.py:293-297)
TOP_FRACTION = 0.01


@dataclass
class AnomalyDINOConfig(MethodConfig):
    image_size: int = 448  # run_anomalydino.py:37 (shorter side; square geometry, see docstring)
    crop_size: Optional[int] = None  # the official crop is top-left to a multiple of 14, always applied
    batch_size: int = 8  # images per forward pass (inference only; no training)
    backbone: str = "vit_small_patch14_dinov2.lvd142m"  # dinov2_vits14, run_anomalydino.py:32
    preprocessing: Preprocessing = "agnostic"  # run_anomalydino.py:35; tables in _anomalydino_preprocessing
    mask_threshold: float = 10.0  # detection.py:96, 152
    mask_morphology: Literal["official", "grid"] = "official"  # backbones.py:170-171 on the [N, 1] column
    mask_reference_images: bool = False  # run_anomalydino.py:44
    num_neighbors: int = 1  # run_anomalydino.py:39
    map_sigma: float = 4.0  # utils.py:29, in original-image pixels

    def validate(self) -> None:
        super().validate()
        if self.num_neighbors < 1:
            raise ConfigError(f"--set num_neighbors={self.num_neighbors}: must be >= 1")
        if not (0 <= self.map_sigma < math.inf):
            raise ConfigError(f"--set map_sigma={self.map_sigma}: must be >= 0")
        if not math.isfinite(self.mask_threshold):
            raise ConfigError(f"--set mask_threshold={self.mask_threshold}: must be a finite number")
        for name in ("image_size", "crop_size"):
            value = getattr(self, name)
            if value is not None and value < 14:
                raise ConfigError(f"--set {name}={value}: must be at least one 14-pixel patch")

    def inert_options(self) -> dict[str, str]:
        if self.preprocessing not in NO_MASK_MODES:
            return {}
        why = f"preprocessing={self.preprocessing} masks no category"
        return {name: why for name in ("mask_threshold", "mask_morphology", "mask_reference_images")}


@register_method("anomalydino")
class AnomalyDINO(Detector):
    """Nearest-neighbour cosine distance of DINOv2 patch features to (rotated) reference patches."""

    VERSION = 2  # 2: the memory bank is the job's checkpoint
    Config = AnomalyDINOConfig
    PROFILES = {
        "paper": {},
        "quick": {"image_size": 224, "batch_size": 16, "preprocessing": "masking_only"},
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # the ViT runs in context.autocast()

    def __init__(self, config: AnomalyDINOConfig, context=None):
        super().__init__(config, context)
        self.backbone = DinoV2(config.backbone, weights=self.context.weights,
                               allow_random_fallback=self.context.allow_random_weights).to(self.device)
        self.knn: Optional[NearestNeighbours] = None
        self.facts: dict = {}
        self.test_patches: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # category -> [kept, total]
        self.test_sigmas: dict[str, set] = defaultdict(set)

    @classmethod
    def check_shots(cls, config, shots: int) -> None:
        """Any K >= 1: one reference image (and its rotations) is a complete memory bank."""
        if shots < 1:
            raise FewShotError(f"{cls.name}: {shots}-shot: needs at least 1 reference image")

    def preprocess(self) -> Preprocess:
        """Square resize with PIL bicubic (the official ``Resize(BICUBIC, antialias=True)``)."""
        return Preprocess(image_size=int(self.config.image_size), crop_size=self.config.crop_size,
                          resample="bicubic")

    # --- features ---------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images [B, 3, H, W] in [0, 1] -> (patch features [B, n, C] float32, grid)."""
        with self.context.autocast():
            tokens, grid = self.backbone.patch_tokens(images.to(self.device, torch.float32))
        return full(tokens).float(), grid

    def policy(self, category: str):
        return category_policy(category, self.config.preprocessing)

    # --- memory bank --------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Build the memory bank. It is the job's checkpoint (phase ``memory_bank``, with the
        record's bank facts): a job killed while it scores resumes without a backbone pass over
        any reference image, and scores with the very same bank (float32, as built)."""
        self.test_patches.clear()
        self.test_sigmas.clear()
        checkpoints = self.context.checkpoints
        if checkpoints.finished("memory_bank"):
            saved = checkpoints.phase("memory_bank").extra_state
            bank, self.facts = saved["bank"], dict(saved["facts"])
        else:
            bank = self._build_bank(train_loader)
            checkpoints.phase("memory_bank").finish(extra={"bank": bank, "facts": self.facts})
            checkpoints.training_done()
        self.knn = NearestNeighbours(bank, device=self.device)

    def _build_bank(self, train_loader: Iterable[Batch]) -> torch.Tensor:
        """The L2-normalised reference patches [M, C] (float32, CPU); sets ``facts``."""
        t0 = time.perf_counter()
        bank, sources, counts, grid = [], set(), defaultdict(int), None
        for batch in tqdm(train_loader, desc="anomalydino bank", disable=not self.context.progress, leave=False):
            views, owners = [], []
            for i in range(len(batch)):
                category = batch.categories[i]
                images, source = self._reference_views(batch, i, self.policy(category).rotation)
                views += images
                owners += [category] * len(images)
                sources.add(source)
                counts[category] += 1
            for start in range(0, len(views), self.config.batch_size):
                chunk = torch.stack(views[start : start + self.config.batch_size])
                feats, grid = self.features(chunk)
                bank += self._reference_patches(feats, grid, owners[start : start + len(chunk)])
        if not bank:
            raise DataError("anomalydino: the training loader yielded no images")
        bank = F.normalize(torch.cat(bank), dim=1)  # faiss.normalize_L2 (detection.py:117-118)
        self.facts = self._bank_facts(bank, grid, counts, sources, time.perf_counter() - t0)
        return bank

    def _reference_views(self, batch: Batch, i: int, rotation: bool) -> tuple[list[torch.Tensor], str]:
        """The reference image ``i`` of ``batch`` and, when its category is rotated, its 8
        rotations (module docstring), each [3, S, S] in [0, 1]; and where they were rotated."""
        if not rotation:
            return [batch.images[i].float().cpu()], "none"
        path = batch.paths[i]
        if path and os.path.isfile(path):
            from PIL import Image

            original, pre = np.asarray(load_rgb(path)), self.preprocess()
            return [pre.image(Image.fromarray(rotate(original, a))) for a in ANGLES], "original files"
        image = batch.images[i].float().cpu().permute(1, 2, 0).numpy()
        rotated = [np.clip(rotate(image, a), 0.0, 1.0).reshape(image.shape) for a in ANGLES]
        return [torch.from_numpy(r).permute(2, 0, 1).contiguous() for r in rotated], "input images"

    def _reference_patches(self, feats: torch.Tensor, grid, owners: list[str]) -> list[torch.Tensor]:
        """Each view's patches for the bank: all of them, or its foreground when
        ``mask_reference_images`` and its category is masked (detection.py:96)."""
        out = []
        for view, category in zip(feats.cpu(), owners):
            if self.config.mask_reference_images and self.policy(category).masking:
                keep = self._mask(view, grid)
                view = view[torch.from_numpy(keep)]
            out.append(view)
        return out

    def _mask(self, feats: torch.Tensor, grid) -> np.ndarray:
        return foreground_mask(feats.numpy(), grid, threshold=self.config.mask_threshold,
                               morphology=self.config.mask_morphology, seed=int(self.context.seed))

    def _bank_facts(self, bank, grid, counts, sources, seconds) -> dict:
        categories = sorted(counts)
        facts = {
            "preprocessing": self.config.preprocessing,
            "grid": list(grid),
            "bank_size": int(bank.shape[0]),
            "reference_images": dict(counts),
            "rotation_source": ", ".join(sorted(s for s in sources if s != "none")) or "none (no category rotated)",
            "category_policy": {c: vars(self.policy(c)) for c in categories},
            "seconds_bank": round(seconds, 2),
        }
        if sources - {"none"}:
            facts["rotation_angles"] = list(ANGLES)
        if self.backbone.weights.is_random:
            facts["random_weights_note"] = RANDOM_WEIGHTS_NOTE
            if any(self.policy(c).masking for c in categories):
                facts["masking_note"] = ("the foreground mask thresholds the first principal component at "
                                         f"{self.config.mask_threshold:g}, a value tied to pretrained DINOv2 "
                                         "features: with random weights the masks are arbitrary")
        return facts

    def knn_device(self) -> Optional[str]:
        return self.knn.where if self.knn is not None else None

    # --- scoring ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        if self.knn is None:
            raise RuntimeError("AnomalyDINO.predict() called before fit()")
        feats, grid = self.features(batch.images)
        patches = self.patch_distances(feats.cpu(), grid, batch.categories)
        scores = torch.from_numpy(mean_top_fraction(patches, TOP_FRACTION))
        size = tuple(batch.images.shape[-2:])
        maps = np.stack([self._map(patches[i].reshape(grid), size, batch.paths[i], batch.categories[i])
                         for i in range(len(batch))])
        return Prediction(scores=scores, maps=torch.from_numpy(maps.astype(np.float32)))

    def patch_distances(self, feats: torch.Tensor, grid, categories: list[str]) -> np.ndarray:
        """Patch features [B, n, C] of test images -> distances [B, n] (float64): squared L2 of
        the normalised features to their nearest bank entry, halved (= 1 - cos); 0 on patches
        the foreground mask of a masked category drops (detection.py:150-177)."""
        patches = np.zeros(feats.shape[:2], dtype=np.float64)
        keep = np.stack([self._test_mask(feats[i], grid, categories[i]) for i in range(feats.shape[0])])
        if keep.any():
            queries = F.normalize(feats[torch.from_numpy(keep)].float(), dim=1)
            dist, _ = self.knn.search(queries, k=self.config.num_neighbors)
            patches[keep] = (dist.double() ** 2).mean(dim=1).numpy() / 2.0
        return patches

    def _test_mask(self, feats: torch.Tensor, grid, category: str) -> np.ndarray:
        """Foreground patches of one test image (all of them unless its category is masked)."""
        keep = self._mask(feats, grid) if self.policy(category).masking else np.ones(feats.shape[0], dtype=bool)
        counts = self.test_patches[category]
        counts[0] += int(keep.sum())
        counts[1] += int(keep.size)
        return keep

    def _map(self, grid_dists: np.ndarray, size: tuple[int, int], path: str, category: str) -> np.ndarray:
        """Distance grid -> bilinear resize to ``size`` -> Gaussian of ``map_sigma`` original pixels."""
        sigma = self._sigma(size, path)
        self.test_sigmas[category].add(tuple(round(s, 4) for s in sigma))
        return anomaly_map(grid_dists, size, sigma)

    def _sigma(self, size: tuple[int, int], path: str) -> tuple[float, float]:
        """``map_sigma`` in original-image pixels, per axis at the job's geometry (module docstring)."""
        sigma = float(self.config.map_sigma)
        if not path or not os.path.isfile(path):
            return sigma, sigma
        width, height = image_size_of(path)
        resized = int(self.config.image_size)  # the square resize; a centre crop keeps the scale
        return sigma * resized / height, sigma * resized / width

    # --- record -------------------------------------------------------------------------------
    def weights_info(self):
        return self.backbone.weights

    def record_extras(self) -> dict:
        out = dict(self.facts)
        if self.test_patches:
            out["test_patches_kept"] = {c: round(k / t, 4) if t else None for c, (k, t) in self.test_patches.items()}
        if self.test_sigmas:
            out["map_sigma_at_geometry"] = {c: sorted(list(s) for s in v) for c, v in self.test_sigmas.items()}
        return out


def mean_top_fraction(patches: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Per row of ``patches`` [B, n]: the mean of its ``int(fraction * n)`` largest values, or
    its maximum when that is 0 (``mean_top1p``, post_eval.py:293-297)."""
    n = patches.shape[1]
    top = int(n * fraction)
    if top == 0:
        return patches.max(axis=1)
    return -np.sort(-patches, axis=1)[:, :top].mean(axis=1)


def anomaly_map(grid_dists: np.ndarray, size: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """``dists2map`` (utils.py:25-30) at ``size`` (H, W): ``cv2.resize`` INTER_LINEAR of the
    float64 grid, then ``scipy.ndimage.gaussian_filter`` with ``sigma`` (rows, cols), reflect
    border, truncate 4."""
    import cv2
    from scipy.ndimage import gaussian_filter

    resized = cv2.resize(np.ascontiguousarray(grid_dists, dtype=np.float64), (int(size[1]), int(size[0])),
                         interpolation=cv2.INTER_LINEAR)
    if max(sigma) <= 0:
        return resized
    return gaussian_filter(resized, sigma=sigma)
