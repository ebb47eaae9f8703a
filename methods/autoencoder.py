"""Convolutional autoencoder baseline (MVTec AD, Bergmann et al. CVPR 2019), as MIAD ran it.

Method (MIAD benchmark appendix A.2.5, ../shared/seeds/004): "a modified U-Net is used ...
instead of a simple stack of convolution layers"; RGB inputs normalised with mean 0.5 and std
0.5; images resized to 256x256, no augmentation; Adam, learning rate 1e-4, weight decay 5e-4;
batch 16; 100 epochs. The model is trained to reconstruct normal images with an L2 loss (the
MVTec AD paper's AE-L2; ``loss=ssim`` gives its AE-SSIM variant, ``loss=l2+ssim`` both).
At test time the anomaly map is the per-pixel reconstruction error (squared error averaged over
RGB, in [0, 1] pixel units; ``1 - SSIM`` per pixel when the loss is SSIM only, as AE-SSIM
does); the image score is the maximum of the map. The map is not smoothed: the MIAD appendix
says nothing about smoothing it, and we know of no source for this baseline that does.
``map_sigma`` > 0 adds the harness's shared Gaussian (``gaussian_blur``) as an option; the
image score is then the maximum of the smoothed map.

Profiles. ``paper`` = MIAD appendix A.2.5 as above. ``miad`` is defined explicitly and is
identical to ``paper``: the appendix is the whole recipe (modified U-Net, mean / std 0.5,
256 px, no augmentation, 100 epochs, batch 16, Adam 1e-4, weight decay 5e-4, no blur); what it
leaves open (loss L2, widths, which skips) is the same choice in both, documented here.
``quick``: a CPU budget (see ``PROFILES``), also without blur.

No silent options (``adbench.config.reject_inert``): no field of this config is switched off by
another (caps such as ``max_steps`` and ``max_width`` may not bind for a given data size or
width, but they are caps, not switches); a negative ``map_sigma`` would silently mean "no
blur", so it is a ConfigError.

Skip connections. A U-Net with a skip at every level can copy its input to its output through
the full-resolution skip, defect included: reconstruction error then no longer singles out
anomalies (tests/test_autoencoder.py shows a pasted defect is reconstructed almost perfectly by a
full-skip U-Net). The MIAD appendix does not say what its "modified U-Net" does about this.
Our remedy: keep skips only at coarse levels, i.e. from encoder stages whose stride is at least
``skip_min_stride`` (default 16: with depth 5 at 256 px, only the 16x16 stage feeds the decoder
besides the 8x8 bottleneck). A coarse skip gives the decoder the layout of the part (where
edges and structures are) but at a resolution too low to copy a small defect pixel for pixel.
``skip_min_stride=1`` is the full U-Net; a value above ``2**depth`` removes every skip (a plain
encoder-decoder like the original MVTec AD baseline).

Widths: the appendix gives none; we use 32 channels at full resolution doubling per stage up to
256 (``base_width``, ``max_width``), two 3x3 conv + BatchNorm + ReLU per stage, max-pool down,
bilinear up-sampling + conv up (the DRAEM reconstructive network's building blocks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.blur import gaussian_blur
from adbench.components.losses import ssim_loss, ssim_map
from adbench.components.step_budget import effective_epochs
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.data.batch_stream import BatchStream, gather, to_device
from adbench.data.image_cache import as_float
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class AutoencoderConfig(MethodConfig):
    image_size: int = 256
    batch_size: int = 16
    epochs: int = 100
    max_steps: Optional[int] = None  # cap on optimiser steps (quick budgets); None = all epochs
    lr: float = 1e-4
    weight_decay: float = 5e-4
    loss: Literal["l2", "ssim", "l2+ssim"] = "l2"
    base_width: int = 32
    max_width: int = 256
    depth: int = 5  # number of 2x down-samplings: bottleneck at stride 2**depth
    skip_min_stride: int = 16  # skips only from stages with stride >= this (1 = full U-Net)
    map_sigma: float = 0.0  # Gaussian smoothing of the error map; 0 = none (no source smooths it)

    def __post_init__(self):
        if self.map_sigma < 0:
            raise ConfigError(f"--set map_sigma={self.map_sigma}: must be >= 0 (0 = no blur)")


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU (the U-Net stage)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNetAutoencoder(nn.Module):
    """U-Net-shaped autoencoder whose skip connections exist only at strides >= skip_min_stride."""

    def __init__(self, base_width: int = 32, max_width: int = 256, depth: int = 5, skip_min_stride: int = 16):
        super().__init__()
        widths = [min(base_width * 2**i, max_width) for i in range(depth + 1)]
        self.depth = depth
        self.skip_levels = [i for i in range(depth) if 2**i >= skip_min_stride]
        self.encoder = nn.ModuleList(
            [conv_block(3, widths[0])] + [conv_block(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
        )
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(depth)):  # decoder stage i brings stride 2**(i+1) back to 2**i
            self.up.append(nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(widths[i + 1], widths[i], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]), nn.ReLU(inplace=True),
            ))
            c_in = widths[i] * (2 if i in self.skip_levels else 1)
            self.decoder.append(conv_block(c_in, widths[i]))
        self.head = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, i in zip(self.up, self.decoder, reversed(range(self.depth))):
            x = up(x)
            if i in self.skip_levels:
                x = torch.cat([x, skips[i]], dim=1)
            x = dec(x)
        return self.head(x)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> mean 0.5 / std 0.5 normalisation of the MIAD appendix, i.e. [-1, 1]."""
    return (images - 0.5) / 0.5


def denormalise(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.5


@register_method("autoencoder")
class Autoencoder(Detector):
    """U-Net autoencoder trained to reconstruct normal images; anomaly = reconstruction error."""
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 2  # 2: resumable training, data order by (seed, epoch)
    Config = AutoencoderConfig
    PROFILES = {
        "paper": {},
        # MIAD appendix A.2.5 = the paper profile (module docstring)
        "miad": {},
        # 2-core CPU budget (~10 min on bottle, 209 train images): half resolution, narrower
        # network (8 -> 64 channels, depth 4, skips from stride 8 = the 16x16 stage, the same
        # relative resolution as the paper profile's), at most 300 optimiser steps in whole
        # epochs, a 10x learning rate (1e-4 barely moves in so few steps). No map blur, as
        # the paper profile (blur is not a budget matter). MVTec bottle, same training (final
        # loss identical): image / pixel AUROC / AUPRO 0.891 / 0.754 / 0.442 without blur,
        # 0.940 / 0.790 / 0.486 with map_sigma=4 (the earlier quick profile).
        "quick": {"image_size": 128, "base_width": 8, "max_width": 64, "depth": 4, "skip_min_stride": 8,
                  "epochs": 25, "max_steps": 300, "lr": 1e-3},
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    def __init__(self, config: AutoencoderConfig, context=None):
        super().__init__(config, context)
        c = self.config
        if c.image_size % (2**c.depth):
            raise ConfigError(f"--set image_size={c.image_size}: must be divisible by 2**depth = {2**c.depth}")
        self.model = UNetAutoencoder(c.base_width, c.max_width, c.depth, c.skip_min_stride).to(self.device)
        self.loss_history: list[float] = []
        self.epochs_run = 0

    def reconstruction_loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L2 on normalised images; SSIM on [0, 1] images (window 11) when asked."""
        loss = recon.new_zeros(())
        if "l2" in self.config.loss:
            loss = loss + F.mse_loss(recon, target)
        if "ssim" in self.config.loss:
            loss = loss + ssim_loss(denormalise(recon), denormalise(target))
        return loss

    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Adam on the reconstruction loss of normal images, resumable (``adbench.training``)."""
        c = self.config
        checkpoints = self.context.checkpoints
        if checkpoints.finished("train"):  # trained in an earlier attempt: no data needed
            phase = checkpoints.phase("train", modules={"model": self.model})
        else:
            images = self.context.training_images(train_loader)  # uint8 [N, 3, H, W], decoded once per job
            # quick caps steps so large training sets cost what small ones do
            epochs = effective_epochs(c.epochs, c.max_steps, len(images), c.batch_size)
            optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
            self.model.train()
            phase = checkpoints.phase("train", modules={"model": self.model}, optimizers={"adam": optimizer})
            stream = BatchStream(phase.plan(epochs, len(images), c.batch_size), gather(images),
                                 self.context.inputs.in_process())
            bar = tqdm(phase.epochs(epochs), total=epochs, initial=phase.epoch, desc="autoencoder",
                       disable=not self.context.progress)
            for epoch in bar:
                for (batch,) in stream.epoch(epoch):
                    x = normalise(as_float(to_device(batch, self.device)))
                    with self.context.autocast():
                        recon = self.model(x)
                    loss = self.reconstruction_loss(full(recon), x)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    phase.step_done(loss, len(x))
                bar.set_postfix(loss=f"{phase.epoch_done():.4f}")
            stream.close()
            phase.finish()
            checkpoints.training_done()
        self.epochs_run = len(phase.history)
        self.loss_history = list(phase.history)
        self.model.eval()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> [0, 1] reconstructions."""
        self.model.eval()
        with self.context.autocast():
            recon = self.model(normalise(images.to(self.device).float()))
        return denormalise(full(recon)).clamp(0, 1)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        x = batch.images.to(self.device).float()
        recon = self.reconstruct(x)
        if self.config.loss == "ssim":
            maps = 1.0 - ssim_map(recon, x)
        else:
            maps = ((recon - x) ** 2).mean(dim=1)
        if self.config.map_sigma > 0:
            maps = gaussian_blur(maps, self.config.map_sigma)
        return Prediction(scores=maps.flatten(1).amax(dim=1).cpu(), maps=maps.cpu())

    def record_extras(self) -> dict:
        c = self.config
        levels = self.model.skip_levels
        return {
            "skip_connections": f"strides {[2**i for i in levels]}" if levels else "none",
            "epochs_run": self.epochs_run,
            "final_train_loss": self.loss_history[-1] if self.loss_history else None,
        }
