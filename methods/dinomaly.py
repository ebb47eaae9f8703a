"""Dinomaly (Guo et al., "Dinomaly: The Less Is More Philosophy in Multi-Class Unsupervised
Anomaly Detection", CVPR 2025, arXiv 2405.14325): a frozen DINOv2 encoder, a noisy bottleneck
and a linear-attention decoder that reconstructs the encoder's middle layers loosely; the
anomaly map is where the reconstruction fails.

Every value follows the official code, github.com/guojiajeremy/Dinomaly at ``c5c76d0`` (its
code is unchanged since ``1859121``; later commits touch the README and licence), cited as
file:line, ``dinomaly_mvtec_uni.py`` unless another file is named. The paper's text (tables,
appendix) was not available while writing this; the code is what its README says reproduces the
paper.

1. **Encoder.** DINOv2 ViT-B/14 with 4 registers, LVD-142M weights (``encoder_name =
   'dinov2reg_vit_base_14'``, :104; ``models/vit_encoder.py``:37-46 builds it with
   ``interpolate_offset=0.1`` and no antialiasing), here timm's
   ``vit_base_patch14_reg4_dinov2.lvd142m`` with DINOv2's position-embedding rule
   (``adbench/components/dinov2.py``). Frozen. The token sequences (class, 4 registers,
   28 x 28 patches at 392 px) leaving blocks 2..9 (``target_layers``, :118) are the features.
2. **Bottleneck, decoder, grouping**: ``_dinomaly_networks.py`` (noisy MLP with dropout 0.2, 8
   linear-attention blocks, two groups of four layers each side, loose reconstruction).
3. **Loss**: ``_dinomaly_scoring.py``, global cosine distance per group with hard-point mining,
   ``p`` from 0 to 0.9 over 1000 iterations, easy points' gradient x 0.1 (:180-181).
4. **Optimisation.** ``StableAdamW`` (``adbench/training/stable_adamw.py``) lr 2e-3, betas 0.9 /
   0.999, weight decay 1e-4, amsgrad, eps 1e-10 for the unified protocol and 1e-8 for one model
   per category (:165-166; ``dinomaly_mvtec_sep.py``:143-144); gradient-norm clipping 0.1
   (:189); warm-up from 0 over 100 iterations then cosine to 2e-4 (``WarmCosineLR``, :167-168),
   stepped every iteration; 10,000 iterations unified, 5,000 per category
   (``dinomaly_mvtec_sep.py``:79); batch 16 (:73), shuffled, incomplete batches dropped (:98-99):
   ``ceil(iterations / (n // 16))`` epochs, stopped at the last iteration (:171-229).
5. **Input.** Square resize to 448 (torchvision ``Resize((448, 448))`` on a PIL image: bilinear,
   antialiased, the harness's ``Preprocess`` default), centre crop 392, ImageNet mean / std
   (``dataset.py``:19-32). No augmentation.
6. **Map and score**: ``_dinomaly_scoring.py``: ``1 - cos`` per group, bilinear to 392, mean over
   groups, bilinear to 256, 5 x 5 Gaussian (sigma 4, zero padding); image score = mean of the top
   1 % of that 256 x 256 map (``evaluation_batch(max_ratio=0.01, resize_mask=256)``, :205).

Protocols. ``unified`` is the paper's main setting (one model over all categories of a dataset:
``--protocol unified``); ``single`` trains one model per category with the ``sep`` scripts'
values. ``iterations`` and ``adam_eps`` left at None take the protocol's value (the record says
which: ``iterations``, ``adam_eps``, ``protocol_defaults``).

Deviations, all documented choices:
* The harness evaluates maps at the job's geometry (392 x 392, masks resized with nearest
  neighbour from the original). The official evaluation scores the 256 x 256 map against masks
  resized bilinearly to 448, cropped, then nearest to 256. Here the image score is computed on the
  256 x 256 map exactly as the official code, and that map is resized bilinearly
  (``align_corners=False``) back to 392 x 392 for the pixel metrics.
* The official test-time evaluation runs during training (every 5,000 iterations) and reports the
  last one; adbench evaluates the model after the last iteration, which is the same model.
* The official data order comes from a shuffling DataLoader; adbench's from the job's seed
  (``adbench.training``), the same in distribution.

Profiles. ``paper``: the above. ``quick``: the same design on a 2-core CPU budget: the ViT-S/14
register encoder (``vit_small_patch14_reg4_dinov2.lvd142m``, 384-d, 6 heads; the official
encoder table offers it as ``dinov2reg_vit_small_14``, ``models/vit_encoder.py``:47-49), resize 256
and crop 224 (the paper's 448 / 392 ratio, 16 x 16 patches), batch 8, 200 iterations (2.1 s
each on 2 idle CPU cores: 421 s for the unified bottle + magnetic_tile model) with the warm-up
and the hard-mining ramp scaled to the same fractions of training as the paper's 100 and 1,000
of 10,000 (2 and 20 iterations). Like every ``quick*`` profile it falls back to random weights
with a warning when the DINOv2 weights are not available; a random DINOv2's blocks barely change their
input (timm's LayerScale starts at 1e-5), so the eight "layers" are nearly the same random linear
projection of each patch (the record says so).

Few-shot: ``--shots K`` works for any K >= 1; with fewer images than a batch the harness draws a
full batch with replacement (``trains_networks``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adbench.components.dinov2 import DinoV2
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.data.batch_stream import BatchStream, gather, to_device
from adbench.data.image_cache import as_float
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError
from adbench.methods._dinomaly_networks import Reconstructor
from adbench.methods._dinomaly_scoring import (cosine_map, evaluation_map, hard_mining_cosine_loss,
                                               hard_mining_fraction, top_fraction_mean)
from adbench.precision import full
from adbench.registry import register_method
from adbench.training.stable_adamw import StableAdamW
from adbench.training.warm_cosine import WarmCosineLR

#: what a record with random encoder weights says (issue 26, item 4)
RANDOM_ENCODER_NOTE = (
    "random DINOv2 weights: timm initialises LayerScale to 1e-5, so blocks 2-9 barely change the tokens and "
    "all eight target layers are nearly the same random linear projection of each patch plus its position "
    "embedding; the reconstruction then measures how well the decoder rebuilds that projection, not what "
    "DINOv2 features make of the image")

#: the protocol-dependent official values: (iterations, StableAdamW eps)
UNIFIED_DEFAULTS = (10000, 1e-10)  # dinomaly_mvtec_uni.py:71, 165-166
SINGLE_DEFAULTS = (5000, 1e-8)  # dinomaly_mvtec_sep.py:79, 143-144


@dataclass
class DinomalyConfig(MethodConfig):
    image_size: int = 448  # dinomaly_mvtec_uni.py:74
    crop_size: Optional[int] = 392  # :75
    batch_size: int = 16  # :73
    backbone: str = "vit_base_patch14_reg4_dinov2.lvd142m"  # dinov2reg_vit_base_14, :104
    target_layers: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9)  # :118
    layers_per_group: int = 4  # fuse_layer_encoder / _decoder [[0..3], [4..7]], :119-120
    decoder_blocks: int = 8  # :142
    bottleneck_dropout: float = 0.2  # bMlp(drop=0.2), :136
    decoder_norm_eps: float = 1e-8  # :145
    iterations: Optional[int] = None  # None: 10000 unified, 5000 single (module docstring)
    lr: float = 2e-3  # :165, :167
    final_lr: float = 2e-4  # :167
    warmup_iterations: int = 100  # :168
    weight_decay: float = 1e-4  # :166
    adam_eps: Optional[float] = None  # None: 1e-10 unified, 1e-8 single
    grad_clip: float = 0.1  # :189
    hard_mining_p: float = 0.9  # p_final, :180
    hard_mining_ramp: int = 1000  # iterations to reach p_final, :181
    hard_mining_factor: float = 0.1  # :182
    map_size: int = 256  # resize_mask=256, :205
    map_kernel: int = 5  # get_gaussian_kernel(kernel_size=5, sigma=4), utils.py:353
    map_sigma: float = 4.0
    top_fraction: float = 0.01  # max_ratio=0.01, :205

    def validate(self) -> None:
        super().validate()
        layers = list(self.target_layers)
        if not layers or sorted(set(layers)) != layers or layers[0] < 0:
            raise ConfigError(f"--set target_layers={self.target_layers}: need increasing block indices >= 0")
        if self.layers_per_group < 1 or len(layers) % self.layers_per_group:
            raise ConfigError(f"--set layers_per_group={self.layers_per_group}: must divide the "
                              f"{len(layers)} target layers")
        if self.decoder_blocks != len(layers):
            raise ConfigError(f"--set decoder_blocks={self.decoder_blocks}: the decoder reconstructs "
                              f"{len(layers)} target layers, one block each")
        if not 0.0 <= self.bottleneck_dropout < 1.0:
            raise ConfigError(f"--set bottleneck_dropout={self.bottleneck_dropout}: must lie in [0, 1)")
        if not 0.0 <= self.hard_mining_p < 1.0:
            raise ConfigError(f"--set hard_mining_p={self.hard_mining_p}: must lie in [0, 1)")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"--set iterations={self.iterations}: must be >= 1")
        if self.adam_eps is not None and self.adam_eps < 0:
            raise ConfigError(f"--set adam_eps={self.adam_eps}: must be >= 0")
        if self.warmup_iterations < 0 or self.hard_mining_ramp < 0:
            raise ConfigError("--set warmup_iterations / hard_mining_ramp: must be >= 0")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"--set top_fraction={self.top_fraction}: must lie in (0, 1]")
        for name in ("image_size", "crop_size"):
            value = getattr(self, name)
            if value is not None and value < 14:
                raise ConfigError(f"--set {name}={value}: must be at least one 14-pixel patch")


@register_method("dinomaly")
class Dinomaly(Detector):
    """Loose reconstruction of frozen DINOv2 layers by a noisy linear-attention decoder."""

    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)
    VERSION = 1
    Config = DinomalyConfig
    PROFILES = {
        "paper": {},
        # module docstring: ViT-S/14 reg4, 256 -> 224, batch 8, 200 iterations, warm-up and
        # hard-mining ramp at the paper's fractions of training (1 % and 10 %)
        "quick": {"backbone": "vit_small_patch14_reg4_dinov2.lvd142m", "image_size": 256, "crop_size": 224,
                  "batch_size": 8, "iterations": 200, "warmup_iterations": 2, "hard_mining_ramp": 20},
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    def __init__(self, config: DinomalyConfig, context=None):
        super().__init__(config, context)
        cfg = self.config
        self.encoder = DinoV2(cfg.backbone, weights=self.context.weights,
                              allow_random_fallback=self.context.allow_random_weights).to(self.device)
        if cfg.target_layers[-1] >= len(self.encoder.model.blocks):
            raise ConfigError(f"--set target_layers={cfg.target_layers}: {cfg.backbone} has "
                              f"{len(self.encoder.model.blocks)} blocks")
        heads = int(self.encoder.model.blocks[0].attn.num_heads)
        n, size = len(cfg.target_layers), cfg.layers_per_group
        groups = tuple(tuple(range(i, i + size)) for i in range(0, n, size))
        self.reconstructor = Reconstructor(self.encoder.embed_dim, heads, decoder_blocks=cfg.decoder_blocks,
                                           bottleneck_dropout=cfg.bottleneck_dropout, encoder_groups=groups,
                                           decoder_groups=groups, norm_eps=cfg.decoder_norm_eps).to(self.device)
        self.unified = len(self.context.categories) > 1
        defaults = UNIFIED_DEFAULTS if self.unified else SINGLE_DEFAULTS
        self.iterations = int(cfg.iterations if cfg.iterations is not None else defaults[0])
        self.adam_eps = float(cfg.adam_eps if cfg.adam_eps is not None else defaults[1])
        self.loss_history: list[float] = []
        self.facts: dict = {}

    # --- the network ------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Images [B, 3, H, W] in [0, 1] -> the target layers' token sequences (frozen, no grad)."""
        with torch.no_grad(), self.context.autocast():
            layers, grid = self.encoder.block_outputs(images.to(self.device, torch.float32), self.config.target_layers)
        return [full(t) for t in layers], grid

    def groups(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Encoder and decoder groups as maps [B, C, gh, gw] (float32)."""
        layers, grid = self.encode(images)
        with self.context.autocast():
            encoder, decoder = self.reconstructor(layers, self.encoder.num_prefix_tokens, grid)
        return [full(e) for e in encoder], [full(d) for d in decoder]

    def training_loss(self, images: torch.Tensor, iteration: int) -> torch.Tensor:
        encoder, decoder = self.groups(images)
        cfg = self.config
        p = hard_mining_fraction(iteration, final=cfg.hard_mining_p, ramp_iterations=cfg.hard_mining_ramp)
        return hard_mining_cosine_loss(encoder, decoder, p=p, factor=self.config.hard_mining_factor)

    def make_optimizer(self) -> tuple[StableAdamW, WarmCosineLR]:
        cfg = self.config
        optimizer = StableAdamW(self.reconstructor.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                                weight_decay=cfg.weight_decay, amsgrad=True, eps=self.adam_eps)
        scheduler = WarmCosineLR(optimizer, base=cfg.lr, final=cfg.final_lr, total=self.iterations,
                                 warmup=min(cfg.warmup_iterations, self.iterations))
        return optimizer, scheduler

    # --- training ------------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        """``iterations`` steps of StableAdamW, resumable (``adbench.training``): the dropout
        draws from torch's generator, which checkpoints capture."""
        cfg, t0 = self.config, time.perf_counter()
        modules = {"reconstructor": self.reconstructor}
        checkpoints = self.context.checkpoints
        if checkpoints.finished("train"):  # trained in an earlier attempt: no data needed
            phase = checkpoints.phase("train", modules=modules)
            n = batch = None
        else:
            images = self.context.training_images(train_loader)  # uint8 [N, 3, S, S]
            n = len(images)
            if n == 0:
                raise ValueError("dinomaly: the training loader yielded no images")
            batch = min(int(cfg.batch_size), n)
            epochs = math.ceil(self.iterations / (n // batch))  # drop_last=True batches per epoch
            optimizer, scheduler = self.make_optimizer()
            params = list(self.reconstructor.parameters())
            self.reconstructor.train()
            phase = checkpoints.phase("train", modules=modules, optimizers={"stable_adamw": optimizer},
                                      schedulers={"lr": scheduler})
            stream = BatchStream(phase.plan(epochs, n, batch, min_batch=batch), gather(images), self.context.inputs)
            bar = tqdm(total=self.iterations, initial=phase.total_steps, desc="dinomaly", unit="it",
                       disable=not self.context.progress)
            for epoch in phase.epochs(epochs):
                for (chunk,) in stream.epoch(epoch):
                    if phase.total_steps >= self.iterations:
                        break
                    x = as_float(to_device(chunk, self.device))
                    loss = self.training_loss(x, phase.total_steps)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    phase.step_done(loss, len(x))
                    bar.update(1)
                bar.set_postfix(loss=f"{phase.epoch_done():.4f}")
            bar.close()
            stream.close()
            phase.finish(extra={"iterations": int(phase.total_steps)})
            checkpoints.training_done()
        self.loss_history = list(phase.history)
        self.reconstructor.eval()
        self.facts = self._facts(phase, n, batch, time.perf_counter() - t0)

    def _facts(self, phase, n: Optional[int], batch: Optional[int], seconds: float) -> dict:
        cfg = self.config
        facts = {
            "protocol_defaults": "unified (10000 iterations, eps 1e-10)" if self.unified
            else "single (5000 iterations, eps 1e-8)",
            "iterations": self.iterations,
            "iterations_done": int(phase.extra_state.get("iterations", phase.total_steps)),
            "adam_eps": self.adam_eps,
            "encoder_layers": list(cfg.target_layers),
            "layers_per_group": cfg.layers_per_group,
            "trainable_parameters": sum(p.numel() for p in self.reconstructor.parameters()),
            "train_loss_per_epoch": [round(v, 5) for v in self.loss_history],
        }
        if n is not None:
            facts.update(train_images_in_loader=n, batch=batch, seconds_fit_this_attempt=round(seconds, 2))
        if self.encoder.weights.is_random:
            facts["random_weights_note"] = RANDOM_ENCODER_NOTE
        return facts

    # --- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def score_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores [B], the official 256 x 256 evaluation maps [B, 1, 256, 256])."""
        cfg = self.config
        encoder, decoder = self.groups(images)
        raw = cosine_map(encoder, decoder, tuple(images.shape[-2:]))
        maps = evaluation_map(raw, map_size=cfg.map_size, kernel_size=cfg.map_kernel, sigma=cfg.map_sigma)
        return top_fraction_mean(maps, cfg.top_fraction), maps

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        self.reconstructor.eval()
        scores, maps = self.score_maps(batch.images)
        size = tuple(batch.images.shape[-2:])
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).squeeze(1)
        return Prediction(scores=scores.cpu(), maps=maps.cpu())

    # --- record --------------------------------------------------------------------------------
    def weights_info(self):
        return self.encoder.weights

    def record_extras(self) -> dict:
        return dict(self.facts)
