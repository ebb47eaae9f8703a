"""Mean-image baseline: how far is each pixel from the average normal image?

The naive per-pixel detector every benchmark should beat, kept as an honest floor. Training
computes the mean of the normal training images at the method's geometry (square resize to
``image_size``). At test time the anomaly map is the per-pixel Euclidean distance over RGB
between the test image and that mean (in [0, 1] pixel units), smoothed with the shared Gaussian
(sigma 4, as the other map-producing methods do); the image score is the maximum of the map.

It has no backbone and nothing learned beyond the mean, so it is blind to everything a mean
image blurs away: texture phase, illumination, pose. On aligned objects under fixed lighting it
can find large defects; on textures it mostly measures how far the texture is from its own
blur. There is no paper to follow: ``paper`` and ``quick`` are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from tqdm import tqdm

from adbench.components.blur import gaussian_blur
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import DataError
from adbench.registry import register_method


@dataclass
class MeanImageConfig(MethodConfig):
    image_size: int = 256
    batch_size: int = 32
    map_sigma: float = 4.0


@register_method("mean_image")
class MeanImage(Detector):
    """Distance to the mean training image, per pixel; image score = map max."""

    Config = MeanImageConfig
    PROFILES = {"paper": {}, "quick": {}}
    produces_maps = True
    protocols = ("single", "unified")

    def fit(self, train_loader: Iterable[Batch]) -> None:
        total, count = None, 0
        for batch in tqdm(train_loader, desc="mean image", disable=not self.context.progress, leave=False):
            images = batch.images.to(self.device, torch.float64)
            total = images.sum(0) if total is None else total + images.sum(0)
            count += images.shape[0]
        if count == 0:
            raise DataError("mean_image: the training loader yielded no images")
        self.mean = (total / count).float()  # [3, H, W]

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        images = batch.images.to(self.device, torch.float32)
        maps = (images - self.mean).pow(2).sum(1).sqrt()  # [B, H, W]
        maps = gaussian_blur(maps, self.config.map_sigma)
        return Prediction(scores=maps.flatten(1).amax(1).cpu(), maps=maps.cpu())
