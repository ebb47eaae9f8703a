"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

1. Locally aware patch features. A frozen ImageNet backbone (wide_resnet50_2, layers 2 and 3:
   strides 8 and 16) describes every position of the layer-2 grid by the 3x3 neighbourhood of
   each layer, layer 3 bilinearly upsampled to the layer-2 grid, each layer adaptively pooled
   to 1024 dims and the two aggregated to 1024 dims (``_patchcore_features.py``).
2. Memory bank. Every patch of every training image is a candidate; a 10 % coreset (1 % as an
   option) is chosen by approximate greedy k-center: random projection to 128 dims, start from
   the mean distance to 10 random points, running minimum-distance vector
   (``components/coreset.py``). Embeddings are streamed to a float16 memmap in the job's scratch
   folder (``_patchcore_memory_bank.py``), so RAM does not grow with the number of images.
3. Scoring. Each test patch's score is the Euclidean distance to its nearest bank entry (exact
   search: faiss on the CPU, torch or faiss-gpu on a GPU, ``components/knn.py``). The anomaly
   map is the patch-score grid upsampled bilinearly to the input size and smoothed with a
   Gaussian of sigma 4. The image score is the maximum patch score; ``reweight=true`` applies
   the paper's Eq. 7: with m* the bank entry nearest to the most anomalous test patch and
   N_b(m*) its b = 9 nearest bank neighbours (m* included),
   s = (1 - softmax_{m in N_b(m*)}(|m_test - m|)[m*]) * s*, computed with log-sum-exp, per image.

Where values come from (``paper`` profile): backbone, layers, 3x3 aggregation, 1024/1024 dims,
10 % coreset with 128-d projection and 10 starts, k = 1, sigma 4 and resize 256 / crop 224 are
the paper's and the official code's (github.com/amazon-science/patchcore-inspection, MVTec
setting). The coreset is the official selection (``coreset_true_distance=false``): the official
``ApproximateGreedyCoresetSampler`` (``src/patchcore/sampler.py``) projects with a
``Linear(D, 128)``, starts from the mean distance to 10 random points and ranks every
candidate by its distance *in the projected space*, which is what
``components.coreset.approximate_greedy_coreset(..., proj_dim=128, num_starts=10,
true_distance=False)`` selects (a Gaussian projection instead of ``nn.Linear``'s uniform
initialisation; ``ceil`` instead of ``int`` for the coreset size). Until issue 24 ``paper``
ranked by original-space distances (``coreset_true_distance=true``, our variant, below), which
is not what the paper ran. The official code has no image-score re-weighting at all: its image score is the
maximum patch score (``src/patchcore/patchcore.py``, ``PatchMaker.score``). Eq. 7 is in the
paper only, and among implementations in anomalib (see ``miad``); the ``paper`` profile
follows the official code (``reweight=false``).

``miad`` profile: what the MIAD benchmark ran (appendix A.2.2): "the publicly available code in
Anomalib", 224x224 resize (no crop), no augmentation, WideResNet50, batch 32, a random sample of
2,000 training images where a category has more ("PatchCore failed to run when training data
size is larger than 2000"), "the other parameters ... consistent with the default configuration
in Anomalib". The paper does not name the anomalib version; anomalib of 2022 is 0.3.x, and the
profile follows v0.3.7 (commit 2f0a87cf: the last 0.3.x; with v0.3.6 the only ones whose
PatchCore loads timm's bare wide_resnet50_2), read in ``anomalib/models/patchcore/{config.yaml,
torch_model.py, anomaly_map.py}``:

* Weights ``wide_resnet50_2.racm_in1k``. anomalib v0.3.6-v0.3.7 build the backbone with
  ``timm.create_model("wide_resnet50_2", pretrained=True, features_only=True, ...)``
  (``components/feature_extractors/feature_extractor.py``) and pin ``timm==0.5.4``
  (``requirements/base.txt``); timm 0.5.4's bare ``wide_resnet50_2`` downloads
  ``wide_resnet50_racm-8234f177.pth`` (``timm/models/resnet.py`` l.88-90 at v0.5.4), which
  timm >= 0.9 names ``wide_resnet50_2.racm_in1k``. Normalisation: ImageNet mean/std in both.
* Layers 2 and 3; each smoothed by ``AvgPool2d(3, 1, 1, count_include_pad=False)``; layer 3
  brought to the layer-2 grid by nearest ``F.interpolate``; concatenated: 1536 dims, stored
  without projection (``aggregation=anomalib``, ``feature_upsample=nearest``).
* 10 % coreset; patch score = plain (not squared) L2 distance to the nearest bank entry
  (``torch.cdist``, k = 1); map = patch scores upsampled by ``F.interpolate``'s default nearest
  mode (``map_upsample=nearest``), Gaussian sigma 4, kernel 33 (= ``components/blur.py``'s
  2*ceil(4 sigma)+1), reflect border.
* Image score: Eq. 7 with b = 9 (``num_neighbors: 9``), as v0.3.7's ``torch_model.py``
  l.171-185 computes it: support = the 9 bank entries nearest to m* (m* first), weight = 1 -
  softmax of the max patch's distances to them, taken at m*. anomalib indexes the flattened
  [B*H*W, C] embedding with a per-image patch index, which is right only for test batch 1
  (its config's ``test_batch_size: 1``); here it is computed per image, so batch size does not
  change scores.
* 2,000-image training subsample (``max_train_images=2000``): a uniform draw without
  replacement from the training images sorted by path, ``numpy.random.default_rng(seed)``
  with the job seed, made before any feature is extracted; only the drawn images are
  decoded and embedded. The record lists them (``train_subsample``: paths relative to the
  deepest common folder). A category with at most 2,000 training images uses all of
  them (MVTec bottle: 209) and the record says so. Which images the MIAD run drew is unknown.
* anomalib 0.3.x's early stopping (on the test set's metrics) cannot change PatchCore's
  one-epoch fit; no method here ever early-stops or picks checkpoints on test data.

Earlier 0.3.x releases differ, and each difference is an option: v0.3.0-v0.3.5 load
torchvision's V1 weights (``torchvision.models.wide_resnet50_2(pretrained=True)``):
``--set backbone=wide_resnet50_2.tv_in1k``; v0.3.0-v0.3.6 average-pool with PyTorch's default
``count_include_pad=True`` (``--set pool_count_include_pad=true``) and score images with an
ad-hoc rule (``anomaly_map.py``: 9-NN of every test patch; w = 1 - max(exp(d)) / sum(exp(d))
over the most anomalous patch's own 9 nearest-neighbour distances; s = w * s*;
``--set reweight_rule=anomalib_030``). The coreset sampler in ``miad`` is the official one
(``paper``'s: dense 128-d projection, 10 starts, ranking in the projected space); anomalib's
(``components/sampling/k_center_greedy.py``: sparse random projection with eps 0.9, i.e.
int(4 ln N / (eps^2/2 - eps^3/3)) dims for N candidates, 352 for 2,000 images at 224 px; one
random start) also ranks in the projected space but differs in those two settings:
``--set coreset_proj_dim=352 --set coreset_starts=1`` comes closest to anomalib's (a dense
instead of a sparse projection). (Before issue 24 ``miad`` inherited ``paper``'s
true-distance ranking, further from anomalib's.)
Pre-processing: anomalib resizes with OpenCV's bilinear (albumentations ``Resize``), this
harness with its shared ``Preprocess``; faiss instead of ``torch.cdist``; float16 storage (below).

No silent options: an option the chosen configuration does not read (``reweight_b`` with
``reweight=false``, ``coreset_*`` sampler settings with ``coreset_mode=none``, the chunking of
the two-level sampler with ``coreset_mode=flat``, the 1024-d pooling sizes with
``aggregation=anomalib``, ``pool_count_include_pad`` with ``aggregation=official`` ...) is a
one-line ``ConfigError`` when set to anything but its default
(``inert_options``, applied by ``adbench.config.reject_inert``).

Deviations, all documented choices rather than accidents:
* Coreset selection uses lazy block updates that pick exactly the flat greedy's centres at a
  fraction of its cost. ``--set coreset_true_distance=true`` (our variant, the ``quick``
  profile's) lets the 128-d projection only find each candidate's nearest centre and ranks the
  candidate by its original-space distance to it: the coverage radius on bottle embeddings is
  1.017x exact greedy k-center instead of the official selection's 1.10x
  (benchmarks/bench_coreset.py), at about twice the (small) selection cost. The default
  (``paper``, ``miad``) is the official selection.
  Above ``coreset_flat_max`` candidates (10k-image MIAD categories) it switches to a
  two-level greedy over chunks of ``coreset_chunk`` patches: every patch stays a candidate,
  embeddings stream to a float16 file. Measured with benchmarks/bench_patchcore_scale.py on
  10,000 generated 224-px images (7.84 M candidates, 1 % = 78,400 bank entries, 2 idle
  cores): fit 19.3 min (features 8.5, coreset 10.7), peak RSS 2.17 GiB. Its coverage radius
  is 1.15-1.20x exact greedy on bottle embeddings, against 1.02-1.10x for the flat selection
  (benchmarks/bench_coreset.py). (``miad``'s 2,000 images x 784 patches = 1.57 M candidates
  also exceed ``coreset_flat_max``.)
* Geometry: the paper's resize 256 + centre crop 224. anomalib evaluates PatchCore on the whole
  256-px image instead; on bottle that alone moves pixel AUROC from 0.9807 to 0.9851
  (``--set crop_size=none``; anomalib 2.7 reports 0.9875 on the same data and backbone).
* Patch scores are Euclidean distances, as in the paper (the official code's faiss scorer
  returns squared L2; the image ranking is the same, the map's contrast differs slightly).
* Bank entries are stored as float16 before selection (3 significant digits; patch distances
  differ far more than that).
* ``quick`` profile: tf_efficientnet_lite0 (real ImageNet weights offline), same layers
  (indices 2 and 3 = strides 8 and 16, 40 and 112 channels), same geometry, 10 % coreset: lite0
  is cheap enough on a CPU that nothing else needs to shrink. It keeps the true-distance
  ranking (``coreset_true_distance=true``) it had before ``paper`` moved to the official
  selection: its coverage is closer to exact k-center at a cost that is small on a CPU, and the
  quick records in results/ and the README's demo numbers were made with it (the same
  configuration, hence the same config hash).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

from adbench.components.blur import gaussian_blur
from adbench.components.coreset import TwoLevelCoreset, approximate_greedy_coreset, coreset_size
from adbench.components.knn import NearestNeighbours
from adbench.methods._patchcore_memory_bank import EmbeddingStore
from adbench.methods._patchcore_features import AnomalibAggregator, PatchAggregator, resize
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError, DataError
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class PatchCoreConfig(MethodConfig):
    image_size: int = 256
    crop_size: Optional[int] = 224
    batch_size: int = 16
    backbone: str = "wide_resnet50_2.tv_in1k"
    layers: tuple[int, ...] = (2, 3)
    patch_size: int = 3
    # official: unfold + adaptive pooling to fixed dims; anomalib: 3x3 average pool + concat
    aggregation: Literal["official", "anomalib"] = "official"
    feature_upsample: Literal["bilinear", "nearest"] = "bilinear"  # deeper layers -> finest grid
    pool_count_include_pad: bool = False  # aggregation=anomalib: true = anomalib v0.3.0-v0.3.6
    pretrain_embed_dim: int = 1024
    target_embed_dim: int = 1024
    max_train_images: Optional[int] = None  # seeded random subset of the training images
    coreset_ratio: float = 0.1
    coreset_proj_dim: int = 128  # 0 (or >= embedding dim): no projection, exact greedy k-center
    coreset_starts: int = 10
    # false: the official selection (ranking in the projected space); true: by original-space
    # distance to the projected-nearest centre (components/coreset.py; quick profile)
    coreset_true_distance: bool = False
    coreset_mode: Literal["auto", "flat", "two_level", "none"] = "auto"
    coreset_flat_max: int = 1_000_000
    coreset_chunk: int = 100_000
    coreset_oversample: float = 2.0
    num_neighbors: int = 1
    reweight: bool = False
    reweight_b: int = 9
    reweight_rule: Literal["paper", "anomalib_030"] = "paper"  # Eq. 7 / anomalib v0.3.0-v0.3.6
    map_upsample: Literal["bilinear", "nearest"] = "bilinear"
    map_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.max_train_images is not None and self.max_train_images < 1:
            raise ConfigError(f"--set max_train_images={self.max_train_images}: must be >= 1 (or none: every image)")

    def inert_options(self, embedding_dim: Optional[int] = None) -> dict[str, str]:
        """Options this configuration never reads, with the reason (no silent options;
        ``resolve_config`` rejects one the user set). ``embedding_dim``: the embedding size when
        known (with ``aggregation=anomalib`` it is the backbone's channel sum)."""
        out: dict[str, str] = {}
        if self.aggregation == "anomalib":
            for name in ("pretrain_embed_dim", "target_embed_dim"):
                out[name] = "aggregation=anomalib concatenates the pooled layers (no pooling to fixed dims)"
        else:
            out["pool_count_include_pad"] = "only aggregation=anomalib average-pools the feature maps"
            embedding_dim = embedding_dim or self.target_embed_dim
        if not self.reweight:
            out["reweight_b"] = "reweight is off"
            out["reweight_rule"] = "reweight is off"
        sampler = ("coreset_proj_dim", "coreset_starts", "coreset_true_distance")
        two_level = ("coreset_chunk", "coreset_oversample")
        if self.coreset_mode == "none" or self.coreset_ratio >= 1:
            why = "coreset_mode=none keeps every patch" if self.coreset_mode == "none" else "coreset_ratio=1 keeps every patch"
            for name in sampler + two_level + ("coreset_flat_max",):
                out[name] = why
            if self.coreset_mode == "none":
                out["coreset_ratio"] = why
        elif self.coreset_mode == "flat":
            for name in two_level + ("coreset_flat_max",):
                out[name] = "coreset_mode=flat never uses the two-level sampler"
        elif self.coreset_mode == "two_level":
            out["coreset_flat_max"] = "coreset_mode=two_level is chosen explicitly"
        no_projection = self.coreset_proj_dim <= 0 or (embedding_dim is not None and self.coreset_proj_dim >= embedding_dim)
        if "coreset_true_distance" not in out and no_projection:
            out["coreset_true_distance"] = (
                f"coreset_proj_dim={self.coreset_proj_dim} means no projection, so the selection already ranks by true distances"
            )
        return out


@register_method("patchcore")
class PatchCore(Detector):
    """Nearest-neighbour distance to a coreset of locally aggregated ImageNet patch features."""

    VERSION = 2  # 2: the memory bank is the job's checkpoint
    Config = PatchCoreConfig
    PROFILES = {
        "paper": {},
        "quick": {"backbone": "tf_efficientnet_lite0.in1k", "coreset_true_distance": True},
        # MIAD appendix A.2.2 + anomalib v0.3.7 defaults (module docstring)
        "miad": {
            "image_size": 224,
            "crop_size": None,
            "batch_size": 32,
            "backbone": "wide_resnet50_2.racm_in1k",
            "aggregation": "anomalib",
            "feature_upsample": "nearest",
            "max_train_images": 2000,
            "reweight": True,
            "map_upsample": "nearest",
        },
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    def __init__(self, config: PatchCoreConfig, context=None):
        super().__init__(config, context)
        cfg = self.config
        if not 0 < cfg.coreset_ratio <= 1:
            raise ConfigError(f"--set coreset_ratio={cfg.coreset_ratio}: must be in (0, 1]")
        if cfg.patch_size < 1 or cfg.patch_size % 2 == 0:
            raise ConfigError(f"--set patch_size={cfg.patch_size}: must be a positive odd number")
        self.backbone = self.pretrained_backbone(cfg.backbone, cfg.layers)
        if cfg.aggregation == "anomalib":
            self.aggregator = AnomalibAggregator(
                self.backbone.channels,
                patch_size=cfg.patch_size,
                upsample=cfg.feature_upsample,
                count_include_pad=cfg.pool_count_include_pad,
            ).to(self.device)
        else:
            self.aggregator = PatchAggregator(
                self.backbone.channels,
                pretrain_dim=cfg.pretrain_embed_dim,
                target_dim=cfg.target_embed_dim,
                patch_size=cfg.patch_size,
                upsample=cfg.feature_upsample,
            ).to(self.device)
        self.grid: Optional[tuple[int, int]] = None
        self.bank: Optional[torch.Tensor] = None
        self.knn: Optional[NearestNeighbours] = None
        self.facts: dict = {}

    # --- 1. locally aware patch features ----------------------------------------------------
    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, D, h, w] patch embeddings on the finest layer's grid."""
        with self.context.autocast():  # the backbone under --precision, the aggregation in float32
            maps = full(self.backbone(images.to(self.device, torch.float32)))
        return self.aggregator(maps)

    # --- 2. memory bank ---------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Build the memory bank. It is the job's checkpoint (phase ``memory_bank``): a job
        killed while it scores resumes without embedding a training image again."""
        checkpoints = self.context.checkpoints
        if checkpoints.finished("memory_bank"):
            saved = checkpoints.phase("memory_bank").extra_state
            self.bank, self.grid, self.facts = saved["bank"], tuple(saved["grid"]), dict(saved["facts"])
        else:
            self._build_bank(train_loader)
            checkpoints.phase("memory_bank").finish(
                extra={"bank": self.bank, "grid": list(self.grid), "facts": self.facts})
            checkpoints.training_done()
        self.knn = NearestNeighbours(self.bank, device=self.device)

    def knn_device(self) -> Optional[str]:
        return self.knn.where if self.knn is not None else None

    def _build_bank(self, train_loader: Iterable[Batch]) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        train_batches, subsample = self._training_subset(train_loader)
        store = EmbeddingStore(self.aggregator.dim, workdir=self.context.workdir)
        try:
            for batch in tqdm(train_batches, desc="patchcore features", disable=not self.context.progress, leave=False):
                emb = self.embed(batch.images)
                self.grid = tuple(emb.shape[-2:])
                store.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]))
            if store.count == 0:
                raise DataError("patchcore: the training loader yielded no images")
            t1 = time.perf_counter()
            embeddings = store.array()
            picks, mode = self._select(embeddings)
            picks = torch.sort(picks).values.numpy()
            self.bank = torch.from_numpy(embeddings[picks].astype("float32"))
            t2 = time.perf_counter()
        finally:
            store.close()
        self.facts = {
            "grid": list(self.grid),
            "candidates": int(store.count),
            "bank_size": int(self.bank.shape[0]),
            "coreset_ratio": float(cfg.coreset_ratio),
            "coreset_mode": mode,
            "embedding_dim": int(self.aggregator.dim),
            "embeddings_spilled_to_disk": bool(store.spilled),
            "seconds_features": round(t1 - t0, 2),
            "seconds_coreset": round(t2 - t1, 2),
            **subsample,
        }

    def _training_subset(self, train_loader: Iterable[Batch]) -> tuple[Iterable[Batch], dict]:
        """``max_train_images``: the training batches restricted to a seeded random subset,
        drawn before any image is embedded, and the facts the record lists about it.

        The harness's loader (a DataLoader over a dataset with ``samples``) is replaced by one
        over the chosen samples only, so the others are not even decoded. Any other iterable
        of batches is read once for its paths, then filtered batch by batch.
        """
        limit = self.config.max_train_images
        if limit is None:
            return train_loader, {}
        samples = getattr(getattr(train_loader, "dataset", None), "samples", None)
        direct = isinstance(train_loader, torch.utils.data.DataLoader) and samples is not None
        paths = [str(s.path) for s in samples] if direct else [p for b in train_loader for p in b.paths]
        seed = int(self.context.seed)
        chosen = draw_subsample(paths, limit, seed)
        facts = {"train_images_available": len(paths), "train_images_used": len(chosen),
                 "train_subsample_limit": int(limit)}
        if len(chosen) == len(paths):
            facts["train_subsample"] = f"all {len(paths)} training images (at most {limit})"
            return train_loader, facts
        facts["train_subsample_rule"] = (
            f"numpy.random.default_rng({seed}).choice over the path-sorted training images, without replacement"
        )
        facts["train_subsample"] = relative_names([paths[i] for i in chosen])
        if direct:
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(train_loader.dataset, chosen), batch_size=train_loader.batch_size,
                shuffle=False, num_workers=train_loader.num_workers, collate_fn=train_loader.collate_fn,
            )
            return loader, facts
        return _filtered(train_loader, {paths[i] for i in chosen}), facts

    def _select(self, embeddings) -> tuple[torch.Tensor, str]:
        cfg = self.config
        n = int(embeddings.shape[0])
        mode = cfg.coreset_mode
        if mode == "none" or cfg.coreset_ratio >= 1:
            return torch.arange(n), "none"
        if mode == "auto":
            mode = "flat" if n <= cfg.coreset_flat_max else "two_level"
        seed = int(self.context.seed)
        if mode == "flat":
            picks = approximate_greedy_coreset(
                embeddings, coreset_size(n, cfg.coreset_ratio), proj_dim=cfg.coreset_proj_dim,
                num_starts=cfg.coreset_starts, seed=seed, device=self.device,
                true_distance=cfg.coreset_true_distance,
            )
            return picks.cpu(), "flat"
        sampler = TwoLevelCoreset(
            embeddings.shape[1], cfg.coreset_ratio, proj_dim=cfg.coreset_proj_dim,
            oversample=cfg.coreset_oversample, num_starts=cfg.coreset_starts, seed=seed, device=self.device,
            true_distance=cfg.coreset_true_distance,
        )
        for s in range(0, n, cfg.coreset_chunk):
            sampler.add(embeddings[s : s + cfg.coreset_chunk])
        return sampler.finish().cpu(), "two_level"

    # --- 3. scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        if self.knn is None:
            raise RuntimeError("PatchCore.predict() called before fit()")
        cfg = self.config
        emb = self.embed(batch.images)
        b, d, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        dist, idx = self.knn.search(queries, k=max(1, cfg.num_neighbors))
        patch = dist.mean(dim=1).reshape(b, h * w)  # k = 1 (default): nearest distance
        scores, where = patch.max(dim=1)
        if cfg.reweight:
            scores = self._reweight(queries.reshape(b, h * w, d).cpu(), where, idx[:, 0].reshape(b, h * w), scores)
        maps = resize(patch.reshape(b, 1, h, w), tuple(batch.images.shape[-2:]), cfg.map_upsample)
        maps = gaussian_blur(maps, cfg.map_sigma).squeeze(1)
        return Prediction(scores=scores, maps=maps)

    def _reweight(self, queries, where, nearest, scores) -> torch.Tensor:
        """Image-score re-weighting of each image's maximum patch score s*, per image.

        ``reweight_rule=paper`` (Eq. 7, anomalib v0.3.7): s = (1 - exp(d* - logsumexp_{N_b(m*)} d)) * s*
        with d the distances of the most anomalous test patch to m* (its nearest bank entry,
        first) and m*'s other b - 1 nearest bank entries.
        ``reweight_rule=anomalib_030`` (anomalib v0.3.0-v0.3.6 ``anomaly_map.py``): d = that
        patch's own b nearest bank distances, s = (1 - exp(max d - logsumexp d)) * s*.
        """
        b_nn = int(self.config.reweight_b)
        out = torch.empty_like(scores)
        for i in range(scores.shape[0]):
            q = queries[i, where[i]].unsqueeze(0)  # most anomalous test patch
            if self.config.reweight_rule == "anomalib_030":
                d, _ = self.knn.search(q, k=b_nn)
                d = d[0]
                out[i] = (1.0 - torch.exp(d.max() - torch.logsumexp(d, dim=0))) * scores[i]
                continue
            m_star = nearest[i, where[i]]
            _, support = self.knn.search(self.bank[m_star].unsqueeze(0), k=b_nn)
            support = support[0]
            if not bool((support == m_star).any()):  # duplicates in the bank: keep m* first
                support = torch.cat([m_star.view(1), support[:-1]])
            else:
                support = torch.cat([m_star.view(1), support[support != m_star]])
            d = torch.cdist(q, self.bank[support]).squeeze(0)  # d[0] = s* (nearest entry)
            weight = 1.0 - torch.exp(d[0] - torch.logsumexp(d, dim=0))
            out[i] = weight * scores[i]
        return out

    # --- what the record says -----------------------------------------------------------------
    def weights_info(self):
        return self.backbone.weights

    def record_extras(self) -> dict:
        return dict(self.facts)


def draw_subsample(paths: list[str], limit: int, seed: int) -> list[int]:
    """Indices into ``paths`` of a uniform random subset of at most ``limit`` images, drawn
    without replacement from the path-sorted list with ``numpy.random.default_rng(seed)`` (so
    it depends on the set of images and the seed, not on the loader's order); sorted by path."""
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    if len(order) <= limit:
        return order
    picks = np.random.default_rng(int(seed)).choice(len(order), size=int(limit), replace=False)
    return [order[j] for j in sorted(int(p) for p in picks)]


def relative_names(paths: list[str]) -> list[str]:
    """Paths relative to their deepest common folder: bare file names for one category's
    ``train/good`` images, ``<category>/train/good/<file>`` across categories (portable)."""
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]


def _filtered(batches: Iterable[Batch], keep: set[str]) -> Iterator[Batch]:
    """The batches with only the images whose path is in ``keep`` (empty batches dropped)."""
    for batch in batches:
        rows = [i for i, p in enumerate(batch.paths) if p in keep]
        if not rows:
            continue
        index = torch.tensor(rows)
        pick = lambda seq: [seq[i] for i in rows]
        yield Batch(
            images=batch.images[index], labels=batch.labels[index], paths=pick(batch.paths),
            categories=pick(batch.categories), defect_types=pick(batch.defect_types),
        )
