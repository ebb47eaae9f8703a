"""Per-pixel L1 distance to the median training image (a plugin method in a few lines)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from adbench.config import MethodConfig
from adbench.detector import Detector, Prediction


@dataclass
class MedianConfig(MethodConfig):
    image_size: int = 32
    batch_size: int = 8


class MedianDistance(Detector):
    Config = MedianConfig
    PROFILES = {"paper": {}, "quick": {}}
    produces_maps = True
    protocols = ("single",)

    def fit(self, train_loader) -> None:
        images = torch.cat([batch.images for batch in train_loader])
        self.median = images.median(dim=0).values.to(self.device)

    def predict(self, batch) -> Prediction:
        maps = (batch.images - self.median).abs().mean(1)
        return Prediction(scores=maps.flatten(1).amax(1), maps=maps)
