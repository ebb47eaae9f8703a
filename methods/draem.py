"""DRAEM: a discriminatively trained reconstruction embedding (Zavrtanik et al., ICCV 2021).

Method. Normal training images get synthetic anomalies: a Perlin-noise mask filled with a
texture from an "anomaly source" image set. A reconstructive sub-network (an encoder-decoder
without skips) learns to turn the corrupted image back into the normal one (loss: L2 + SSIM);
a discriminative sub-network (a U-Net) sees the input concatenated with its reconstruction and
segments the synthetic anomaly (focal loss). At test time the segmentation's anomaly channel is
the anomaly map, and the image score is the maximum of that map after a 21x21 mean filter.

Where each value comes from:

* MIAD benchmark appendix A.2.4 (../shared/seeds/004, which ran the official code): 256x256
  resize; texture augmentation with 3 ops drawn from {posterize, sharpness, solarize,
  equalize, brightness, colour, autocontrast}; rotation (-45, 45) degrees on normal images;
  700 epochs, batch 8; Adam 1e-4, x0.2 after 560 and 630 epochs (80 % and 90 %); L2 + SSIM on
  the reconstruction, focal loss on the segmentation.
* DRAEM paper and official code (github.com/vitjanz/draem), where MIAD is silent: network
  widths (reconstructive base 128, discriminative base 64; ``recon_width`` / ``disc_width``
  shrink them for the quick profile); weights initialised N(0, 0.02) (BatchNorm scales
  N(1, 0.02)); blending ``out = (1 - m) x + m ((1 - beta) t + beta x)`` with beta ~ U[0, 0.8)
  (beta weighs the *normal* image, so the texture's opacity is 1 - beta); half of the samples
  are left anomaly-free with an empty mask, and an empty Perlin mask also counts as normal;
  Perlin lattice 2**k, k in [0, 6), noise rotated (-90, 90), threshold 0.5 (all inside
  ``adbench.components.synth``, which implements exactly this recipe, so it is used as is);
  the normal image is rotated with probability 0.3 (``rotate_prob``; the official code rotates
  30 % of images by (-90, 90), MIAD narrows the range to (-45, 45)); loss weights 1 / 1 / 1;
  focal gamma 2; SSIM window 11; inputs in [0, 1], no normalisation; the 21x21 mean filter
  counts the zero padding (``avg_pool2d``'s default, as the official evaluation does).
* Texture ops use torchvision's ``transforms.v2.functional`` (not hand-written). Ranges follow
  the imgaug/pillike defaults the official code uses where the op maps directly: posterize
  1-8 bits, sharpness factor U(0, 2), solarize threshold U(32, 128) / 255; brightness factor
  U(0.8, 1.2) (the official MultiplyAndAddToBrightness multiplier; its additive part is not
  used); colour = saturation factor U(0, 2) (PIL ImageEnhance.Color, MIAD's "color change").
* Anomaly source: ``--set anomaly_source=DIR`` (the paper uses DTD); without it procedural
  textures from ``adbench.components.textures`` (not DTD, so numbers are not directly
  comparable with the paper's), and ``record_extras()["anomaly_source"]`` says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.losses import focal_loss, ssim_loss
from adbench.components.synth import TextureSource, numpy_rng, perlin_texture_anomaly
from adbench.config import MethodConfig
from adbench.data import Batch, load_all_images
from adbench.detector import Detector, Prediction
from adbench.registry import register_method


@dataclass
class DRAEMConfig(MethodConfig):
    image_size: int = 256
    batch_size: int = 8
    epochs: int = 700
    max_steps: Optional[int] = None  # cap on optimiser steps (quick budgets); None = all epochs
    lr: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.8, 0.9)  # fractions of the epochs; lr x lr_gamma at each
    lr_gamma: float = 0.2
    recon_width: int = 128
    disc_width: int = 64
    anomaly_source: Optional[str] = None  # texture folder (DTD in the paper); None = procedural
    anomaly_prob: float = 0.5  # share of training samples that get an anomaly
    beta_max: float = 0.8  # beta ~ U[0, beta_max): weight of the normal image inside the mask
    rotate_prob: float = 0.3
    rotate_degrees: float = 45.0
    texture_ops: int = 3
    focal_gamma: float = 2.0
    score_filter: int = 21  # mean-filter size before the image-score max


# --------------------------------------------------------------------------------------------
# Networks (DRAEM section 3.1; layer layout of the official code)
# --------------------------------------------------------------------------------------------
def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def double_conv(c_in: int, c_mid: int, c_out: Optional[int] = None) -> nn.Sequential:
    return nn.Sequential(*conv_bn_relu(c_in, c_mid), *conv_bn_relu(c_mid, c_out or c_mid))


def up_conv(c_in: int, c_out: int) -> nn.Sequential:
    """x2 bilinear up-sampling then conv + BN + ReLU (DRAEM up-samples; no transposed convs)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *conv_bn_relu(c_in, c_out))


class ReconstructiveSubNetwork(nn.Module):
    """Encoder-decoder without skip connections: 5 stages (widths w, 2w, 4w, 8w, 8w), 4 pools."""

    def __init__(self, width: int = 128, channels: int = 3):
        super().__init__()
        w = width
        self.encoder = nn.ModuleList([
            double_conv(channels, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w),
            double_conv(4 * w, 8 * w), double_conv(8 * w, 8 * w),
        ])
        self.decoder = nn.Sequential(
            up_conv(8 * w, 8 * w), double_conv(8 * w, 8 * w, 4 * w),
            up_conv(4 * w, 4 * w), double_conv(4 * w, 4 * w, 2 * w),
            up_conv(2 * w, 2 * w), double_conv(2 * w, 2 * w, w),
            up_conv(w, w), double_conv(w, w, w),
            nn.Conv2d(w, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
        return self.decoder(x)


class DiscriminativeSubNetwork(nn.Module):
    """U-Net on concat(reconstruction, input): 6 encoder stages (w .. 8w), skips at every level."""

    def __init__(self, width: int = 64, in_channels: int = 6, out_channels: int = 2):
        super().__init__()
        w = width
        enc = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList(
            [double_conv(in_channels, enc[0])] + [double_conv(enc[i - 1], enc[i]) for i in range(1, 6)]
        )
        dec = [8 * w, 4 * w, 2 * w, w, w]  # decoder widths, coarse to fine
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        c = enc[5]
        for level, c_out in zip(range(4, -1, -1), dec):
            self.up.append(up_conv(c, c_out))
            self.fuse.append(double_conv(c_out + enc[level], c_out))
            c = c_out
        self.head = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, level in zip(self.up, self.fuse, range(4, -1, -1)):
            x = fuse(torch.cat([up(x), skips[level]], dim=1))
        return self.head(x)


def init_weights(module: nn.Module) -> None:
    """Official DRAEM initialisation: conv N(0, 0.02), BatchNorm scale N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Synthetic anomalies (DRAEM section 3.2 + MIAD's augmentation list)
# --------------------------------------------------------------------------------------------
def _texture_ops():
    import torchvision.transforms.v2.functional as TF

    return {
        "posterize": lambda t, r: TF.posterize(t, int(r.integers(1, 9))),
        "sharpness": lambda t, r: TF.adjust_sharpness(t, float(r.uniform(0.0, 2.0))),
        "solarize": lambda t, r: TF.solarize(t, float(r.uniform(32, 128))),
        "equalize": lambda t, r: TF.equalize(t),
        "brightness": lambda t, r: TF.adjust_brightness(t, float(r.uniform(0.8, 1.2))),
        "colour": lambda t, r: TF.adjust_saturation(t, float(r.uniform(0.0, 2.0))),
        "autocontrast": lambda t, r: TF.autocontrast(t),
    }


TEXTURE_OPS = ("posterize", "sharpness", "solarize", "equalize", "brightness", "colour", "autocontrast")


def augment_texture(texture: torch.Tensor, rng: np.random.Generator, n_ops: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Apply ``n_ops`` distinct ops (random order) to a float [3, H, W] texture in [0, 1]."""
    ops = _texture_ops()
    names = [TEXTURE_OPS[i] for i in rng.choice(len(TEXTURE_OPS), size=n_ops, replace=False)]
    t = (texture * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)  # equalize/posterize want uint8
    for name in names:
        t = ops[name](t, rng)
    return t.float() / 255.0, names


class DRAEMAnomalySampler:
    """Turns a normal uint8 image into DRAEM's training triple (normal, augmented, mask).

    ``normal`` is the (possibly rotated) image the reconstruction must reproduce; ``augmented``
    equals it outside ``mask`` bit for bit and is the texture blend inside. Anomaly-free samples
    (probability 1 - anomaly_prob, or an empty Perlin mask) have augmented == normal and an
    all-false mask.
    """

    def __init__(self, source: TextureSource, anomaly_prob: float = 0.5, beta_max: float = 0.8,
                 rotate_prob: float = 0.3, rotate_degrees: float = 45.0, texture_ops: int = 3):
        self.source = source
        self.anomaly_prob = anomaly_prob
        self.beta_max = beta_max
        self.rotate_prob = rotate_prob
        self.rotate_degrees = rotate_degrees
        self.texture_ops = texture_ops

    def __call__(self, image: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        import torchvision.transforms.v2.functional as TF

        rng = numpy_rng(generator)
        if image.dtype == torch.uint8 and rng.random() < self.rotate_prob:
            angle = float(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
            image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])
        normal = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        h, w = normal.shape[-2:]
        if rng.random() >= self.anomaly_prob:
            return normal, normal.clone(), torch.zeros(h, w, dtype=torch.bool)
        texture, _ = augment_texture(self.source.sample((h, w), rng), rng, self.texture_ops)
        augmented, mask = perlin_texture_anomaly(normal, texture, rng, beta_range=(0.0, self.beta_max), nonempty=False)
        return normal, augmented, mask

    def batch(self, images: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        triples = [self(img, generator) for img in images]
        return tuple(torch.stack(parts) for parts in zip(*triples))  # type: ignore[return-value]


def effective_epochs(epochs: int, max_steps: Optional[int], n_images: int, batch_size: int) -> int:
    """Whole epochs to run: all of them, or as many as fit in ``max_steps`` optimiser steps
    (at least one). Quick profiles cap steps so a large training set (magnetic_tile, 802
    images) costs about what a small one does, while a tiny set still runs few steps."""
    if max_steps is None:
        return epochs
    steps_per_epoch = max(1, math.ceil(n_images / batch_size))
    return max(1, min(epochs, max_steps // steps_per_epoch))


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------
@register_method("draem")
class DRAEM(Detector):
    """Reconstructive + discriminative sub-networks trained on Perlin texture anomalies."""

    Config = DRAEMConfig
    PROFILES = {
        "paper": {},
        # 2-core CPU budget (~10 min on bottle, ~20 on magnetic_tile): half resolution, networks
        # 1/16 (reconstructive) and 1/8 (discriminative) of the official widths, at most 500
        # optimiser steps in whole epochs (max_steps), a 10x learning rate (1e-4 is tuned for
        # 18k steps), mean filter scaled with the resolution (21 px at 256 -> 11 px at 128).
        "quick": {"image_size": 128, "recon_width": 8, "disc_width": 8, "epochs": 20, "max_steps": 500,
                  "lr": 1e-3, "score_filter": 11},
    }
    produces_maps = True
    protocols = ("single", "unified")

    def __init__(self, config: DRAEMConfig, context=None):
        super().__init__(config, context)
        c = self.config
        self.reconstructive = ReconstructiveSubNetwork(c.recon_width).to(self.device)
        self.discriminative = DiscriminativeSubNetwork(c.disc_width).to(self.device)
        self.reconstructive.apply(init_weights)
        self.discriminative.apply(init_weights)
        self.source = TextureSource(c.anomaly_source)
        self.sampler = DRAEMAnomalySampler(self.source, c.anomaly_prob, c.beta_max, c.rotate_prob,
                                           c.rotate_degrees, c.texture_ops)
        self.loss_history: list[float] = []
        self.epochs_run = 0

    def training_loss(self, normal: torch.Tensor, augmented: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L2 + SSIM between reconstruction and the normal image, focal loss on the segmentation."""
        recon = self.reconstructive(augmented)
        logits = self.discriminative(torch.cat([recon, augmented], dim=1))
        return (F.mse_loss(recon, normal) + ssim_loss(recon, normal)
                + focal_loss(logits, mask, gamma=self.config.focal_gamma))

    def fit(self, train_loader: Iterable[Batch]) -> None:
        c = self.config
        images = load_all_images(train_loader)  # uint8 [N, 3, H, W]; augmented anew every step
        self.epochs_run = epochs = effective_epochs(c.epochs, c.max_steps, len(images), c.batch_size)
        params = list(self.reconstructive.parameters()) + list(self.discriminative.parameters())
        optimizer = torch.optim.Adam(params, lr=c.lr)
        milestones = sorted({max(1, int(round(f * epochs))) for f in c.lr_milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=c.lr_gamma)
        shuffle = torch.Generator().manual_seed(self.context.seed)
        rng = np.random.default_rng(self.context.seed)
        self.reconstructive.train()
        self.discriminative.train()
        bar = tqdm(range(epochs), desc="draem", disable=not self.context.progress)
        for _ in bar:
            order = torch.randperm(len(images), generator=shuffle)
            total, count = 0.0, 0
            for start in range(0, len(order), c.batch_size):
                idx = order[start : start + c.batch_size]
                normal, augmented, mask = (t.to(self.device) for t in self.sampler.batch(images[idx], rng))
                loss = self.training_loss(normal, augmented, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                count += len(idx)
            scheduler.step()
            self.loss_history.append(total / max(count, 1))
            bar.set_postfix(loss=f"{self.loss_history[-1]:.4f}")
        self.reconstructive.eval()
        self.discriminative.eval()

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[0, 1] images -> (reconstruction, anomaly probability map [B, H, W])."""
        self.reconstructive.eval()
        self.discriminative.eval()
        x = images.to(self.device).float()
        recon = self.reconstructive(x)
        logits = self.discriminative(torch.cat([recon, x], dim=1))
        return recon, torch.softmax(logits, dim=1)[:, 1]

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        _, maps = self.segment(batch.images)
        k = self.config.score_filter
        smoothed = F.avg_pool2d(maps[:, None], k, stride=1, padding=k // 2) if k > 1 else maps[:, None]
        scores = smoothed.flatten(1).amax(dim=1)
        return Prediction(scores=scores.cpu(), maps=maps.cpu())

    def record_extras(self) -> dict:
        return {
            "anomaly_source": self.source.description,
            "epochs_run": self.epochs_run,
            "final_train_loss": self.loss_history[-1] if self.loss_history else None,
        }
