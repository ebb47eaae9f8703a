"""Per-location Gaussian of pretrained features: a PaDiM-like honest baseline.

Method (after PaDiM, Defard et al., ICPR 2021, "PaDiM: a Patch Distribution Modeling
Framework for Anomaly Detection and Localization"):

1. Embed. A frozen ImageNet CNN gives feature maps of layers 1, 2 and 3 (strides 4, 8, 16:
   ResNet ``layer1..3``; the same strides for EfficientNets). They are brought to one grid of
   stride ``grid_stride`` (finer maps average-pooled, coarser ones bilinearly upsampled) and
   concatenated, so each grid cell holds a vector mixing fine and semantic features. PaDiM then
   keeps a random subset of the channels (``feature_dims``; 550 of 1792 for Wide-ResNet-50-2
   in the paper), drawn once from the job's seed.
2. Model. For every grid location separately, the normal training vectors are summarised by
   a mean and a covariance. The covariance is estimated with Ledoit-Wolf shrinkage towards a
   scaled identity, plus PaDiM's ``eps * I``. Why shrinkage rather than PaDiM's 0.01 I alone:
   with 40 training images (the synthetic set) or 209 (MVTec bottle) and hundreds of
   dimensions, the sample covariance is singular or close to it; Ledoit-Wolf picks the amount
   of shrinkage from the data, per location. Statistics are accumulated in one streaming pass
   (sums of shifted vectors, their outer products and fourth moments), so memory is
   O(locations x dims^2), independent of the number of training images.
3. Score. The anomaly map is the Mahalanobis distance of each test vector to its location's
   Gaussian, upsampled bilinearly to the image and smoothed with a Gaussian (sigma 4, PaDiM's
   value and the harness's shared blur). The image score is the map maximum (PaDiM's).

Paper profile (PaDiM's WRN-50-2 set-up): wide_resnet50_2, layers 1-3, resize 256 and centre
crop 224, grid stride 4 (56x56 locations), 550 random dimensions. Its covariances take
56*56*550^2*4 bytes = 3.8 GB: a GPU set-up, as in the paper. ``quick``: tf_efficientnet_lite0
(the one backbone with real weights offline), resize 256 without crop, grid stride 8 (32x32),
100 random of 176 dimensions (PaDiM's ResNet-18 value): 41 MB of covariances; fitting MVTec
bottle (209 images) costs about 30 CPU-seconds, nearly all of it the backbone's forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.blur import gaussian_blur
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError, DataError, FewShotError
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class FeatureGaussianConfig(MethodConfig):
    image_size: int = 256
    crop_size: Optional[int] = 224
    batch_size: int = 32
    backbone: str = "wide_resnet50_2.tv_in1k"
    layers: tuple[int, ...] = (1, 2, 3)
    grid_stride: int = 4
    feature_dims: Optional[int] = 550  # random channel subset; None keeps all channels
    eps: float = 0.01  # PaDiM's regulariser, added to the shrunk covariance
    shrinkage: bool = True  # Ledoit-Wolf shrinkage towards a scaled identity
    map_sigma: float = 4.0


@register_method("feature_gaussian")
class FeatureGaussian(Detector):
    """Mahalanobis distance to a per-location Gaussian of backbone features (PaDiM-like)."""

    Config = FeatureGaussianConfig
    PROFILES = {
        "paper": {},
        "quick": {
            "backbone": "tf_efficientnet_lite0.in1k",
            "crop_size": None,
            "grid_stride": 8,
            "feature_dims": 100,
        },
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    @classmethod
    def check_shots(cls, config, shots: int) -> None:
        """The per-location Gaussian's covariance needs at least two distinct images."""
        if shots < 2:
            raise FewShotError(f"{cls.name}: {shots}-shot: "
                               "the per-location Gaussian's covariance needs at least 2 training images")

    def __init__(self, config: FeatureGaussianConfig, context=None):
        super().__init__(config, context)
        if config.grid_stride < 1 or self.preprocess().output_size % config.grid_stride:
            raise ConfigError(
                f"--set grid_stride={config.grid_stride}: must divide the input size "
                f"{self.preprocess().output_size}"
            )
        if config.feature_dims is not None and config.feature_dims < 1:
            raise ConfigError(f"--set feature_dims={config.feature_dims}: must be >= 1 (or none)")
        self.backbone = self.pretrained_backbone(config.backbone, config.layers)
        total = sum(self.backbone.channels)
        keep = total if config.feature_dims is None else min(config.feature_dims, total)
        generator = torch.Generator().manual_seed(int(self.context.seed))
        self.channel_index = torch.randperm(total, generator=generator)[:keep].sort().values.to(self.device)

    # --- 1. embedding ----------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> vectors [B, L, d] on the stride-``grid_stride`` grid."""
        h, w = images.shape[-2] // self.config.grid_stride, images.shape[-1] // self.config.grid_stride
        maps = []
        with self.context.autocast():  # the backbone under --precision, the statistics in float32
            fmaps = full(self.backbone(images.to(self.device)))
        for fmap in fmaps:
            if fmap.shape[-2] > h:
                fmap = F.adaptive_avg_pool2d(fmap, (h, w))
            elif fmap.shape[-2] < h:
                fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
            maps.append(fmap)
        feats = torch.cat(maps, 1).index_select(1, self.channel_index)
        return feats.flatten(2).transpose(1, 2).float()  # [B, h*w, d]

    # --- 2. per-location Gaussian ------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        shift = s1 = s2 = q4 = qy = q2 = None
        n = 0
        for batch in tqdm(train_loader, desc="feature gaussian", disable=not self.context.progress, leave=False):
            x = self.embed(batch.images)
            if shift is None:
                # Shifting by the first batch's mean keeps float32 outer products accurate.
                shift = x.mean(0)
                L, d = shift.shape
                s1 = torch.zeros(L, d, dtype=torch.float64, device=self.device)
                s2 = torch.zeros(L, d, d, dtype=torch.float32, device=self.device)
                q4 = torch.zeros(L, dtype=torch.float64, device=self.device)
                q2 = torch.zeros(L, dtype=torch.float64, device=self.device)
                qy = torch.zeros(L, d, dtype=torch.float64, device=self.device)
            y = x - shift
            sq = y.pow(2).sum(-1)  # ||y||^2, [B, L]
            s1 += y.sum(0).double()
            yl = y.transpose(0, 1)  # [L, B, d]: one small matmul per location (bmm; einsum is 10x slower)
            s2 += torch.bmm(yl.transpose(1, 2), yl)
            q2 += sq.sum(0).double()
            q4 += sq.double().pow(2).sum(0)
            qy += (sq.unsqueeze(-1) * y).sum(0).double()
            n += x.shape[0]
        if n < 2:
            raise DataError(f"feature_gaussian: needs at least 2 training images, got {n}")
        delta = s1 / n  # mean - shift
        self.mean = (shift.double() + delta).float()
        cov, self.shrinkage_used = self._covariance(s2, delta, n, q2, q4, qy, s1)
        del s2
        self.precision = self._invert(cov)  # in place: one [L, d, d] buffer at a time

    def _covariance(self, s2, delta, n, q2, q4, qy, s1):
        """Ledoit-Wolf shrunk covariance per location, from the streamed moments."""
        L, d = delta.shape
        eye = torch.eye(d, dtype=torch.float64, device=self.device)
        covs = torch.empty(L, d, d, dtype=torch.float32, device=self.device)
        shrink_all = torch.zeros(L, dtype=torch.float64, device=self.device)
        for start in range(0, L, 256):
            sl = slice(start, start + 256)
            dl = delta[sl]
            cov = s2[sl].double() / n - dl.unsqueeze(-1) * dl.unsqueeze(-2)  # MLE covariance
            if self.config.shrinkage:
                # sum_k ||x_k - mu||^4 from the moments of y_k = x_k - shift (mu - shift = dl):
                # ||x-mu||^2 = a - 2b + c with a = ||y||^2, b = y.dl, c = ||dl||^2.
                c = dl.pow(2).sum(-1)
                sum_ab = (qy[sl] * dl).sum(-1)
                sum_b2 = torch.einsum("ld,lde,le->l", dl, s2[sl].double(), dl)
                sum_b = (s1[sl] * dl).sum(-1)
                sum_a = q2[sl]
                fourth = q4[sl] - 4 * sum_ab + 2 * c * sum_a + 4 * sum_b2 - 4 * c * sum_b + n * c * c
                mu = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) / d
                frob = cov.pow(2).sum((-2, -1))
                dist = (frob - d * mu * mu).clamp_min(1e-30)  # ||S - mu I||_F^2
                beta = ((fourth - n * frob) / (n * n)).clamp_min(0)
                shrink = torch.minimum(beta, dist) / dist
                cov = (1 - shrink)[:, None, None] * cov + (shrink * mu)[:, None, None] * eye
                shrink_all[sl] = shrink
            covs[sl] = (cov + self.config.eps * eye).float()
        return covs, float(shrink_all.mean())

    @staticmethod
    def _invert(covs: torch.Tensor) -> torch.Tensor:
        """Precision matrices, per location.

        Thousands of tiny inversions: on a busy CPU, torch's batched LAPACK with 2+ OpenMP
        threads spins in barriers and ran 20-50x slower than with one thread (measured here:
        256 inversions of 100x100, 15 s vs 0.3 s wall), so this part runs single-threaded.
        """
        out = covs  # each block is copied to float64 before its slot is overwritten
        threads = torch.get_num_threads()
        if covs.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            for start in range(0, covs.shape[0], 256):
                block = covs[start : start + 256].double()
                out[start : start + 256] = torch.linalg.inv(block).float()
        finally:
            torch.set_num_threads(threads)
        return out

    # --- 3. scoring ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        images = batch.images
        H, W = images.shape[-2:]
        y = self.embed(images) - self.mean  # [B, L, d]
        # Mahalanobis per location: y_l^T P_l y_l, batched over locations.
        t = torch.bmm(y.transpose(0, 1), self.precision)  # [L, B, d]
        dist = (t * y.transpose(0, 1)).sum(-1).clamp_min(0).sqrt().transpose(0, 1)  # [B, L]
        h, w = H // self.config.grid_stride, W // self.config.grid_stride
        maps = F.interpolate(dist.reshape(-1, 1, h, w), size=(H, W), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.config.map_sigma)
        return Prediction(scores=maps.flatten(1).amax(1).cpu(), maps=maps.cpu())

    def weights_info(self):
        return self.backbone.weights

    def record_extras(self) -> dict:
        return {
            "feature_dims": int(self.channel_index.numel()),
            "grid_stride": self.config.grid_stride,
            "mean_ledoit_wolf_shrinkage": getattr(self, "shrinkage_used", None),
        }
