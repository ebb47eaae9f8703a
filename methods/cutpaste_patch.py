"""CutPaste patch level (Li et al., CVPR 2021, section 2.4 and appendix A.5): localisation.

1. Training: the image-level recipe (``methods/cutpaste.py``, same trainer) on random
   ``patch_size`` crops of the 256x256 images, CutPaste applied to the crop (``CP(c(x))``).
   Appendix A.5 uses 32x32 crops; the main text's 64x64 is ``--set patch_size=64``.
2. Test: every 32x32 patch with stride 4 is embedded *on its own* (the crops are cut out and
   batched; no shared convolution over the full image), giving a 57x57 grid of 512-d vectors.
3. Scoring: a GDE (Ledoit-Wolf, Mahalanobis) per grid location for aligned objects, or one
   shared GDE over all locations for textures and rotated objects (appendix A.5). ``gde_mode``:
   ``per_location``, ``shared`` or ``auto``. ``auto`` uses per-location GDEs when the dataset
   adapter declares every training category an aligned object (``RunContext.categories``, the
   adapter's CategoryInfo) and a shared GDE otherwise. Used outside the harness, without that
   declaration, ``auto`` falls back to the names in ``aligned_categories`` (default: the
   paper's aligned MVTec objects: bottle, cable, capsule, metal_nut, pill, toothbrush,
   transistor, zipper). The record says which was used and why (``gde_mode_used``,
   ``gde_mode_rule``).
4. Receptive-field upsampling (FCDD-style, as the paper cites): a transposed convolution with
   stride = test stride and one 32x32 Gaussian kernel maps the 57x57 scores to 256x256.
   Choices where the paper is silent: sigma = patch_size / 4; the result is divided by the
   transposed convolution of ones (the kernel overlap), so border pixels, covered by fewer
   patches, are not darkened. Image score = maximum of the map.

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
from adbench.errors import ConfigError, DataError
from adbench.registry import register_method
from adbench.methods.cutpaste import CutPasteConfig, CutPasteTrainer, torch_threads

ALIGNED_MVTEC = ("bottle", "cable", "capsule", "metal_nut", "pill", "toothbrush", "transistor", "zipper")


@dataclass
class CutPastePatchConfig(CutPasteConfig):
    patch_size: int = 32
    test_stride: int = 4
    gde_mode: Literal["auto", "shared", "per_location"] = "auto"
    aligned_categories: tuple[str, ...] = ALIGNED_MVTEC
    gde_max_images: Optional[int] = None
    shared_gde_max_patches: int = 100_000
    patch_batch_size: int = 1024
    smoothing_sigma: Optional[float] = None  # None = patch_size / 4


def patch_grid(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, Gy, Gx, 3, patch, patch] crops (top-left of cell (i, j) = stride*(i, j))."""
    crops = images.unfold(2, patch, stride).unfold(3, patch, stride)  # [B, 3, Gy, Gx, p, p]
    return crops.permute(0, 2, 3, 1, 4, 5)


def upsample_scores(scores: torch.Tensor, patch: int, stride: int, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """[B, Gy, Gx] patch scores -> [B, H, W]: transposed conv with one Gaussian patch kernel,
    normalised by the kernel overlap; resized if the grid does not tile the image exactly."""
    coords = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :])[None, None]
    x = scores[:, None].float()
    num = F.conv_transpose2d(x, kernel, stride=stride)
    den = F.conv_transpose2d(torch.ones_like(x[:1]), kernel, stride=stride)
    out = num / den.clamp_min(1e-12)
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out[:, 0]


@register_method("cutpaste_patch")
class CutPastePatch(Detector):
    """CutPaste patch-level detector: 32x32-crop CutPaste training, dense patch GDE, Gaussian
    receptive-field upsampling. See the module docstring for sources and choices."""

    Config = CutPastePatchConfig
    PROFILES = {
        "paper": {},
        "paper_64": {"patch_size": 64},
        # 2 CPU cores: 128 px images, 32 px patches stride 8 (13x13 grid), 100 training steps
        "quick": {"image_size": 128, "test_stride": 8, "epochs": 2, "steps_per_epoch": 50,
                  "gde_max_images": 120, "patch_batch_size": 512},
    }
    produces_maps = True
    protocols = ("single",)

    def _grid_size(self, size: int) -> int:
        cfg = self.config
        if cfg.patch_size > size:
            raise ConfigError(f"--set patch_size={cfg.patch_size}: larger than the image ({size} px)")
        return (size - cfg.patch_size) // cfg.test_stride + 1

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
                out.append(net.embed(chunk).float().cpu())
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
        chunks, categories = [], set()
        for batch in train_loader:
            chunks.append((batch.images * 255.0 + 0.5).clamp(0, 255).to(torch.uint8))
            categories.update(batch.categories)
        if not chunks:
            raise DataError("cutpaste_patch: empty training set")
        data = torch.cat(chunks)
        self._grid_size(min(data.shape[-2:]))
        aligned, self.gde_mode_rule = self._aligned(categories)
        self.gde_mode_used = cfg.gde_mode if cfg.gde_mode != "auto" else ("per_location" if aligned else "shared")
        self.categories = sorted(categories)

        self.trainer = CutPasteTrainer(cfg, self.context, crop=cfg.patch_size)
        self.trainer.train(data)

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
        self.gde = GaussianDensity().fit(feats)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        cfg = self.config
        grid = self.embed_grid(batch.images)  # [B, Gy, Gx, D]
        b, gy, gx, d = grid.shape
        if self.gde_mode_used == "per_location":
            scores = self.gde.score(grid.reshape(b, gy * gx, d).transpose(0, 1))  # [L, B]
            scores = scores.transpose(0, 1).reshape(b, gy, gx)
        else:
            scores = self.gde.score(grid.reshape(-1, d)).reshape(b, gy, gx)
        sigma = cfg.smoothing_sigma or cfg.patch_size / 4.0
        maps = upsample_scores(scores, cfg.patch_size, cfg.test_stride, tuple(batch.images.shape[-2:]), sigma)
        return Prediction(scores=maps.flatten(1).amax(1), maps=maps)

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
