"""CutPaste patch level (Li et al., CVPR 2021, section 2.4 and appendix A.5): localisation.

1. Training (sec. 2.4, eq. 3): the image-level recipe (``methods/cutpaste.py``, same trainer) on
   random ``patch_size`` crops of the images, CutPaste applied to the crop (``CP(c(x))``).
   Appendix A.5 uses 32x32 crops of 256x256 images; sec. 4.2's 64x64 is profile ``paper_64``.
2. Test (A.5): every ``patch_size`` patch at stride ``test_stride`` (4) is embedded *on its own*
   (the crops are cut out and batched; no shared convolution over the full image), giving a
   (256-32)/4+1 = 57 x 57 grid of 512-d vectors. Height and width are handled separately, so a
   non-square input gives a non-square grid (under the harness images are square: its geometry
   squashes every image to ``image_size`` x ``image_size``).
3. Scoring (A.5): a GDE (Ledoit-Wolf, Mahalanobis) per grid location for aligned objects, or one
   shared GDE over all locations for textures and rotated objects. ``gde_mode``:
   ``per_location``, ``shared`` or ``auto``. ``auto`` uses per-location GDEs when the dataset
   adapter declares every training category an aligned object (``RunContext.categories``, the
   adapter's CategoryInfo) and a shared GDE otherwise. Used outside the harness, without that
   declaration, ``auto`` falls back to the names in ``aligned_categories`` (default: A.5's
   aligned MVTec objects: bottle, cable, capsule, metal_nut, pill, toothbrush, transistor,
   zipper). The record says which was used and why (``gde_mode_used``, ``gde_mode_rule``).
4. Anomaly map (sec. 2.4, 4.2, A.5): "receptive field upsampling via Gaussian smoothing following
   [32] (FCDD), which essentially applies the transposed convolution with the stride of 4, the
   same stride that we used for dense feature extraction, using a single convolution kernel of
   size 32x32 whose weights are determined by a Gaussian distribution". ``upsample_scores`` is
   exactly that: every grid score spreads a ``patch_size`` x ``patch_size`` Gaussian over its
   own patch and the contributions add up (FCDD's algorithm: A' <- A' + a * G(c, sigma) per
   score a with receptive-field centre c). Border pixels, covered by fewer patches, get less
   mass than interior pixels (A.5's patches stop at the image border). The map is divided by one constant, the largest
   coverage (the transposed convolution of a grid of ones): this changes no ranking and makes a
   constant grid c map to c wherever the image is fully covered. Pixels no patch covers (a
   remainder when (size - patch) is not a multiple of the stride) are 0.
5. Image score (Fig. 1 caption): the patch score map "is then max-pooled for detection", i.e.
   the maximum of the raw grid scores (``image_score=grid_max``), not of the upsampled map.

Where the paper is silent (our choices, all options):
* ``smoothing_sigma`` = 10 px: FCDD's released code picks the kernel's standard deviation from
  the kernel size and uses 10 for every kernel of 20 px or more (its MVTec runs override it
  with 12). In a 32-px kernel a sigma of 10 is cut at 0.28 of the peak on each side, so a lone
  outlier cell shows as a soft-edged square; ``smoothing_sigma=6`` (cut at 0.03) draws round
  blobs and measured 0.01 lower pixel AUROC on bottle. At stride 8 the sum of the shifted
  kernels ripples by ~2 % inside the image (0.4 % at A.5's stride 4).
* ``upsample_norm``: ``none`` (default, FCDD) or ``overlap``: divide pixel by pixel by the
  kernel overlap (what this module did before issue 13; a Nadaraya-Watson mean). With
  ``overlap`` a pixel within ``patch_size / 2`` of the border shows the raw score of the one or
  two patches that reach it at full weight (in the corners the overlap is ~1/250 of the
  interior's at stride 8, ~1/1000 at stride 4: the "1000x corner boost" of issue 13), while
  interior pixels average 16 (stride 8) or 64 (stride 4) patches, so the normal images' highest
  map values pile up in that band, where the kernels' cut edges also show as 8-px steps.
* ``image_score``: ``grid_max`` (default, Fig. 1) or ``map_max`` (maximum of the map, before
  issue 13).

Measured (issue 13, ``benchmarks/bench_cutpaste_patch_maps.py``: the quick profile's trained
model, its grid scores mapped both ways; exact pixel metrics):

  ===========================  ===============  ============================  ======================
  pixel AUROC / AUPRO          image AUROC      ``overlap``, sigma 8, map      ``none``, sigma 10,
                               (grid max)       max (before issue 13)          grid max (default)
  ===========================  ===============  ============================  ======================
  bottle, 128 px (13x13)       0.955            0.879 / 0.582                  0.918 / 0.670
  bottle, 256 px (29x29)       0.987            0.932 / 0.749                  0.942 / 0.775
  magnetic_tile, 128 px        0.582            0.572 / 0.290                  0.523 / 0.164
  magnetic_tile, 256 px        0.592            0.571 / 0.323                  0.546 / 0.240
  ===========================  ===============  ============================  ======================

With ``overlap``, 88 % (magnetic_tile) of the normal images' top 1 % pixels lie in the border
band that no patch centre reaches (``patch_size / 2`` px; 44 % of a 128-px image); with the sum,
24 %. The sum lowers that band for defects too: on bottle 2 % of the defect pixels lie in it and
the sum wins; on magnetic_tile 46 % do (tile edges and corners break), the shared GDE barely
separates patches, and ``overlap``, which shows the border at full weight, scores higher. Use
``upsample_norm=overlap`` for such data, knowing that it is not the paper's map.

Score range: per-location Mahalanobis distances reach 2e7 on bottle at 256 px (cells whose
training patches hardly vary). The runner's streamed pixel metrics used to lose resolution on
such maps (equal-width bins over the raw range: 0.906 / 0.744 where the exact values are
0.942 / 0.775); they now bin ``asinh(score)`` (``adbench.evaluation.streaming``), and saved
predictions keep such maps as float32 (float16 overflowed to inf).

No silent options (``CutPastePatchConfig.inert_options``; ``resolve_config`` makes a user-set
one a one-line ConfigError naming it): ``translate`` (the random crop position is the patch
model's translation: the trainer never translates crops), ``embed_batch_size`` (grids are
embedded in chunks of ``patch_batch_size``), ``feature_level`` and ``ensemble`` are read by the
image-level model only, on top of the image-level model's own rules. ``gde_l2_normalize`` is
read: it L2-normalises the patch embeddings for the patch GDEs as it does for the image GDE.
``aligned_categories`` is read by ``gde_mode=auto`` only (an explicit ``shared`` or
``per_location`` never asks which categories are aligned), ``shared_gde_max_patches`` by a
shared GDE only (``gde_mode=per_location`` keeps every patch of its locations); set under the
other modes they are errors (issue 24: they were accepted there without effect).

Memory: per-location GDEs store the n centred training embeddings per location (Woodbury form,
see ``adbench.components.gde``): 57*57 x n x 512 floats (1.4 GB for bottle's 209 images).
``gde_max_images`` caps the images the GDE sees (the quick profile uses it).
The shared GDE uses at most ``shared_gde_max_patches`` patch embeddings drawn evenly from all
training images (Ledoit-Wolf of 512-d needs far fewer than the 680k of a full grid).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.gde import GaussianDensity
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError, DataError, FewShotError
from adbench.registry import register_method
from adbench.methods.cutpaste import CutPasteConfig, CutPasteTrainer, torch_threads

ALIGNED_MVTEC = ("bottle", "cable", "capsule", "metal_nut", "pill", "toothbrush", "transistor", "zipper")


#: options of the image-level config that the patch-level model never reads, and why
PATCH_INERT = {
    "translate": "cutpaste_patch never translates (the random crop position is the patch model's translation)",
    "embed_batch_size": "cutpaste_patch embeds grids in chunks of patch_batch_size",
    "feature_level": "cutpaste_patch embeds patches with the encoder's pooled features",
    "ensemble": "cutpaste_patch trains one network",
}


@dataclass
class CutPastePatchConfig(CutPasteConfig):
    patch_size: int = 32
    test_stride: int = 4
    gde_mode: Literal["auto", "shared", "per_location"] = "auto"
    aligned_categories: tuple[str, ...] = ALIGNED_MVTEC
    gde_max_images: Optional[int] = None
    shared_gde_max_patches: int = 100_000
    patch_batch_size: int = 1024
    smoothing_sigma: float = 10.0  # FCDD's value for kernels of 20 px or more (module docstring)
    upsample_norm: Literal["none", "overlap"] = "none"
    image_score: Literal["grid_max", "map_max"] = "grid_max"

    def inert_options(self) -> dict[str, str]:
        """The image-level model's inert options plus those the patch model never reads
        (``resolve_config`` turns one the user set into a one-line ConfigError)."""
        out = dict(super().inert_options())
        for name, why in PATCH_INERT.items():
            out.setdefault(name, why)
        if self.gde_mode != "auto":  # only auto's fallback reads the list (_aligned)
            out["aligned_categories"] = f"gde_mode={self.gde_mode} is set explicitly (only gde_mode=auto reads it)"
        if self.gde_mode == "per_location":  # only a shared GDE subsamples patches (fit)
            out["shared_gde_max_patches"] = "gde_mode=per_location fits one GDE per location on every patch"
        return out

    def validate(self) -> None:
        super().validate()
        for name in ("patch_size", "test_stride"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--set {name}={getattr(self, name)}: must be >= 1")
        if not self.smoothing_sigma > 0:
            raise ConfigError(f"--set smoothing_sigma={self.smoothing_sigma}: must be > 0")
        size = self.crop_size or self.image_size
        if self.patch_size > size:
            raise ConfigError(f"--set patch_size={self.patch_size}: larger than the {size}-px input")


def patch_grid(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, Gy, Gx, 3, patch, patch] crops (top-left of cell (i, j) = stride*(i, j))."""
    crops = images.unfold(2, patch, stride).unfold(3, patch, stride)  # [B, 3, Gy, Gx, p, p]
    return crops.permute(0, 2, 3, 1, 4, 5)


def gaussian_kernel(patch: int, sigma: float) -> torch.Tensor:
    """[patch, patch] Gaussian with peak 1 at the patch centre ((patch - 1) / 2 on both axes)."""
    coords = torch.arange(patch, dtype=torch.float64) - (patch - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * float(sigma) ** 2))
    return (g[:, None] * g[None, :]).float()


def upsample_scores(scores: torch.Tensor, patch: int, stride: int, size: tuple[int, int], sigma: float,
                    norm: str = "none") -> torch.Tensor:
    """[B, Gy, Gx] patch scores -> [B, H, W] map by receptive-field upsampling (A.5, FCDD).

    A transposed convolution with stride ``stride`` and one ``patch`` x ``patch`` Gaussian
    kernel: cell (i, j) adds ``score * G`` over its own patch, rows ``stride*i ..
    stride*i + patch - 1``. ``norm="none"``: the sum, divided by one constant (the largest
    coverage), so a constant grid gives that constant wherever the image is fully covered and
    less towards the borders. ``norm="overlap"``: divided pixel by pixel by the coverage (the
    weighted mean of the patches reaching each pixel; pre-issue-13 behaviour). Pixels that no
    patch covers are 0. Height and width are independent (non-square grids and images).
    """
    b, gy, gx = scores.shape
    h, w = int(size[0]), int(size[1])
    span = ((gy - 1) * stride + patch, (gx - 1) * stride + patch)
    if span[0] > h or span[1] > w:
        raise ValueError(f"a {gy}x{gx} grid of {patch}-px patches at stride {stride} covers "
                         f"{span[0]}x{span[1]} px, more than the {h}x{w} image")
    kernel = gaussian_kernel(patch, sigma)[None, None].to(scores.device)
    out = F.conv_transpose2d(scores[:, None].float(), kernel, stride=stride)
    cover = F.conv_transpose2d(torch.ones(1, 1, gy, gx, device=scores.device), kernel, stride=stride)
    if norm == "overlap":
        out = out / cover
    elif norm == "none":
        out = out / cover.max()
    else:
        raise ValueError(f"norm={norm!r}: expected 'none' or 'overlap'")
    out = F.pad(out, (0, w - span[1], 0, h - span[0]))  # uncovered remainder: 0
    return out[:, 0]


@register_method("cutpaste_patch")
class CutPastePatch(Detector):
    """CutPaste patch-level detector: 32x32-crop CutPaste training, dense patch GDE, Gaussian
    receptive-field upsampling. See the module docstring for sources and choices."""
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 3  # 2: resumable training, paper map (sum of Gaussians); 3: augmentations seeded per step
    Config = CutPastePatchConfig
    PROFILES = {
        "paper": {},
        "paper_64": {"patch_size": 64},
        # 2 CPU cores: the paper's geometry (256 px, 32 px patches) at test stride 8 (29x29 grid,
        # a quarter of A.5's 57x57 patches), 100 training steps, GDE on 120 training images.
        # (Before issue 13: 128 px, a 13x13 grid of patches a quarter of the image wide.)
        "quick": {"test_stride": 8, "epochs": 2, "steps_per_epoch": 50,
                  "gde_max_images": 120, "patch_batch_size": 512},
    }
    produces_maps = True
    protocols = ("single",)
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    @classmethod
    def check_shots(cls, config, shots: int) -> None:
        """Each patch position's Gaussian density (GDE) needs at least two distinct training images."""
        if shots < 2:
            raise FewShotError(f"{cls.name}: {shots}-shot: "
                               "the per-patch Gaussian density estimator (GDE) needs at least 2 training images")

    def _grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """(Gy, Gx): patches per column and per row, ((size - patch) // stride + 1 on each axis)."""
        cfg = self.config
        if cfg.patch_size > min(height, width):
            raise ConfigError(f"--set patch_size={cfg.patch_size}: larger than the image ({height}x{width} px)")
        return (height - cfg.patch_size) // cfg.test_stride + 1, (width - cfg.patch_size) // cfg.test_stride + 1

    @torch.no_grad()
    def embed_grid(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, Gy, Gx, D]: each patch embedded on its own."""
        cfg = self.config
        crops = patch_grid(images.float(), cfg.patch_size, cfg.test_stride)
        b, gy, gx = crops.shape[:3]
        flat = crops.reshape(-1, 3, cfg.patch_size, cfg.patch_size)
        net = self.trainer.net
        net.eval()
        out = []
        with torch_threads(cfg.num_threads):
            for i in range(0, len(flat), cfg.patch_batch_size):
                chunk = flat[i : i + cfg.patch_batch_size].contiguous().to(self.device)
                with self.context.autocast():  # the network under --precision, the GDE in float32
                    feats = net.embed(chunk)
                out.append(feats.float().cpu())
        return torch.cat(out).reshape(b, gy, gx, -1)

    def _aligned(self, categories: set[str]) -> tuple[bool, str]:
        """Whether every training category is an aligned object, and where that came from."""
        declared = self.context.categories
        if categories and all(c in declared for c in categories):
            aligned = all(declared[c].kind == "object" and declared[c].aligned for c in categories)
            return aligned, "auto: per_location iff the dataset adapter declares every category an aligned object"
        aligned = bool(categories) and all(c in self.config.aligned_categories for c in categories)
        return aligned, "auto: per_location iff every category is in aligned_categories (no adapter declaration)"

    def fit(self, train_loader: Iterable[Batch]) -> None:
        cfg = self.config
        decoded = self.context.decoded_training_images(train_loader)  # uint8, decoded once per job
        if len(decoded) == 0:
            raise DataError("cutpaste_patch: empty training set")
        data, categories = decoded.tensor, {s.category for s in decoded.samples}
        self._grid_shape(*data.shape[-2:])
        aligned, self.gde_mode_rule = self._aligned(categories)
        self.gde_mode_used = cfg.gde_mode if cfg.gde_mode != "auto" else ("per_location" if aligned else "shared")
        self.categories = sorted(categories)

        self.trainer = CutPasteTrainer(cfg, self.context, crop=cfg.patch_size)
        self.trainer.train(data)  # resumable (adbench.training): a finished network is restored
        self.context.checkpoints.training_done()

        rng = np.random.default_rng(self.context.seed + 1)
        use = np.arange(len(data))
        if cfg.gde_max_images and len(data) > cfg.gde_max_images:
            use = np.sort(rng.choice(len(data), cfg.gde_max_images, replace=False))
        self.gde_images = int(len(use))
        per_image = []
        for i in tqdm(use, desc="cutpaste_patch embed train", disable=not self.context.progress):
            grid = self.embed_grid(data[int(i) : int(i) + 1].float() / 255.0)[0]  # [Gy, Gx, D]
            self.grid_shape = tuple(grid.shape[:2])
            flat = grid.reshape(-1, grid.shape[-1])
            if self.gde_mode_used == "shared":
                k = min(len(flat), max(1, cfg.shared_gde_max_patches // len(use)))
                flat = flat[torch.from_numpy(rng.choice(len(flat), k, replace=False))]
            per_image.append(flat)
        if self.gde_mode_used == "per_location":
            feats = torch.stack(per_image, dim=1)  # [L, n, D]
        else:
            feats = torch.cat(per_image)  # [m, D]
        del per_image
        self.gde = GaussianDensity(l2_normalize=cfg.gde_l2_normalize).fit(feats)

    @torch.no_grad()
    def grid_scores(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, Gy, Gx] Mahalanobis distances of the patch embeddings."""
        grid = self.embed_grid(images)  # [B, Gy, Gx, D]
        b, gy, gx, d = grid.shape
        if self.gde_mode_used == "per_location":
            if (gy, gx) != tuple(self.grid_shape):
                raise DataError(f"cutpaste_patch: per-location GDEs were fitted on a {self.grid_shape[0]}x"
                                f"{self.grid_shape[1]} grid; this batch gives {gy}x{gx} (other image size)")
            scores = self.gde.score(grid.reshape(b, gy * gx, d).transpose(0, 1))  # [L, B]
            return scores.transpose(0, 1).reshape(b, gy, gx)
        return self.gde.score(grid.reshape(-1, d)).reshape(b, gy, gx)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        cfg = self.config
        scores = self.grid_scores(batch.images)
        maps = upsample_scores(scores, cfg.patch_size, cfg.test_stride, tuple(batch.images.shape[-2:]),
                               cfg.smoothing_sigma, cfg.upsample_norm)
        image_scores = scores.flatten(1).amax(1) if cfg.image_score == "grid_max" else maps.flatten(1).amax(1)
        return Prediction(scores=image_scores, maps=maps)

    def weights_info(self):
        from adbench.weights import NO_WEIGHTS

        return self.trainer.weights if hasattr(self, "trainer") else NO_WEIGHTS

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.trainer.net.parameters()) if hasattr(self, "trainer") else 0

    def record_extras(self) -> dict:
        extras: dict = {"gde_mode": self.config.gde_mode}
        if hasattr(self, "trainer"):
            extras.update(self.trainer.summary())
            extras.update({
                "gde_mode_used": self.gde_mode_used,
                "gde_mode_rule": self.gde_mode_rule if self.config.gde_mode == "auto" else "set explicitly",
                "categories": self.categories,
                "grid": list(self.grid_shape),
                "gde_images": self.gde_images,
            })
        return extras
