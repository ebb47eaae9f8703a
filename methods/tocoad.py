"""ToCoAD: two-stage contrastive fine-tuning feeding a PatchCore memory bank (Liang et al., seed 002).

Method (Sec. 3, Fig. 2). An ImageNet extractor F is adapted to the target images in two
stages before a PatchCore memory bank is built on it:

I.  Discriminative network pre-training (DNP, Sec. 3.1): F frozen; an anomaly generator G
    rotates each normal image slightly and by k x 90 degrees and pastes a synthetic anomaly
    (Perlin mask x texture by default); a discriminative network D that mirrors F (upsample,
    concatenate, compress to a 2-channel mask at input size) learns to segment it with the
    focal loss (eq. 2).
II. Negative-guided contrastive learning (NCL, Sec. 3.2): D frozen; F fine-tuned jointly with a
    SimSiam network C on layers 3 and 4 (separate heads, adaptive average pooling, 3-layer
    projector shared by both branches, 1-layer predictor, stop-gradient on the projector
    branch), loss ``lambda * L_sym + (1 - lambda) * L_neg`` (eq. 6), L_neg = focal loss of the
    frozen D on new synthetic anomalies seen through the current F.
III. Inference (Sec. 3.3) IS PatchCore on the fine-tuned F: this class subclasses
    ``methods.patchcore.PatchCore`` and only swaps its frozen backbone for F, so the layer-2+3
    aggregation, coreset (10 %), faiss search and map are literally PatchCore's code. The patch
    score is eq. 8-9 applied to *every* patch: with c* the bank entry nearest to patch p and
    N_b(c*) the b = 9 bank entries nearest to c* (c* included, as PatchCore's official code
    does), ``s = (1 - exp(s') / sum_{c' in N_b(c*)} exp(|p - c'|)) * s'`` (log-sum-exp); the
    image score is the maximum patch score; the map is PatchCore's (bilinear upsampling of the
    patch scores, Gaussian sigma 4). ``reweight_per_patch=false`` gives PatchCore's own rule.

Switches (the paper's ablations, Tables 4-9): ``stages`` none / ncl / both (none = PatchCore
on the ImageNet F, identical scores with the same settings; ncl = NCL without a pre-trained D,
i.e. L_sym only, "trained with only normal augmented samples"); ``generator`` perlin /
cutpaste / nsa; ``lam``; ``neg_loss`` focal / ce; ``contrastive_layers`` (4 / 2,3 / 3,4 /
2,3,4 ...); ``contrastive_concat``; ``contrastive`` simsiam / byol (EMA target of F and the
projector, momentum ``byol_ema``).

Where each value comes from:
* Paper Sec. 4.1: wide_resnet50_2 ImageNet; D = "inverse WideResNet50" with 2 output channels;
  coreset 0.1; DNP Adam 1e-4 x0.2 "from 80 epochs to 90 epochs" (read as milestones 80 and
  90), 100 epochs; NCL SGD momentum 0.9, weight decay 1e-4, cosine annealing, 100 epochs (150
  on BTAD: ``--set ncl_epochs=150``); batch 16; resize 256, centre crop 224; layers 2+3 for the
  bank; lambda 0.5 (Table 6); SimSiam on layers 3+4 without concatenation (Tables 4, 8).
* Not given by the paper, our choices:
  - ``dnp_layers = (1, 2, 3)`` (strides 4, 8, 16): D reads the two bank layers, so L_neg's
    gradient in stage II reaches exactly the features the memory bank uses, plus layer 1 for
    the stride-4 detail a pixel mask needs (the decoder of an inverse ResNet ends there).
    Layer 4 is left out: it is not in the bank, and SimSiam already trains it. Recorded in
    ``record_extras``; ``--set dnp_layers=...`` changes it.
  - D's widths: 256 at the deepest input, halved per level up (``dnp_width``).
  - ``ncl_lr = 0.003``: SimSiam's linear scaling rule, base lr 0.05 x batch 16 / 256 = 0.003125,
    rounded; it is also small enough not to wreck ImageNet features in a fine-tuning run.
  - Projector/predictor width 2048 (SimSiam's); predictor = one Linear (the paper: "1-layer").
  - F's batch-norm layers keep ImageNet statistics in stage II (affine parameters train); see
    ``ToCoADTrainer.fit_ncl``.
  - Slight rotation: U(-10, 10) degrees (the paper only says "slight").
  - Every training image gets an anomaly (eq. 1: T_G = G(I_i) for all i): ``synthetic_ratio
    1:0``; Perlin masks are redrawn until non-empty. Seed 000's 1:1 (and 1:2, 2:1) are options.
  - Anomaly source: ``--set anomaly_source=DIR`` (DTD in the paper); default procedural
    textures from adbench (recorded), so numbers are not directly comparable with the paper's.
* Seed 000 extensions (a related augmented-patch method's supplement; all off in ``paper``):
  ``backbone=convnext_*`` with ``freeze_epochs=20`` (F frozen for the first N NCL epochs, then
  fine-tuned; the ``convnext`` profile sets layer indices for ConvNeXt, whose feature index i
  has stride 2**(i+2)); ``generator=patch`` with ``patch_source=same|other`` and
  ``patch_transform=jitter|pepper``; ``synthetic_ratio`` 1:1 / 1:0 / 1:2 / 2:1.

``quick`` profile: tf_efficientnet_lite0 (offline ImageNet weights), PatchCore's geometry,
layers and coreset, D width 64, heads 256-d, batch 8, 2 DNP + 2 NCL epochs of at most 5 steps
each (a token fine-tuning: 40 synthetic + 80 view images per stage; enough to exercise the
pipeline on real data on a shared 2-core CPU, far too little to expect the paper's gain).
Batch 16 in stage II was killed by the out-of-memory killer on the shared 23 GiB machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from adbench.components.blur import gaussian_blur
from adbench.components.tocoad_training import ToCoADTrainer, parse_ratio
from adbench.data import Batch, load_all_images
from adbench.detector import Prediction
from adbench.errors import ConfigError, DataError
from adbench.registry import register_method
from adbench.methods.patchcore import PatchCore, PatchCoreConfig


@dataclass
class ToCoADConfig(PatchCoreConfig):
    # switches of Table 5: none = PatchCore, ncl = NCL only (L_sym), both = DNP + NCL
    stages: Literal["none", "ncl", "both"] = "both"
    reweight_per_patch: bool = True  # eq. 8-9 on every patch (b = reweight_b)
    # stage I (DNP)
    dnp_layers: tuple[int, ...] = (1, 2, 3)
    dnp_width: int = 256
    dnp_epochs: int = 100
    dnp_lr: float = 1e-4
    dnp_milestones: tuple[int, ...] = (80, 90)
    dnp_gamma: float = 0.2
    generator: Literal["perlin", "cutpaste", "nsa", "patch"] = "perlin"
    anomaly_source: Optional[str] = None
    patch_source: Literal["same", "other"] = "same"
    patch_transform: Literal["jitter", "pepper", "none"] = "jitter"
    synthetic_ratio: str = "1:0"
    rotate_degrees: float = 10.0
    rotate90: bool = True
    neg_loss: Literal["focal", "ce"] = "focal"
    focal_gamma: float = 2.0
    # stage II (NCL)
    ncl_epochs: int = 100
    ncl_lr: float = 0.003
    ncl_momentum: float = 0.9
    ncl_weight_decay: float = 1e-4
    lam: float = 0.5
    contrastive: Literal["simsiam", "byol"] = "simsiam"
    contrastive_layers: tuple[int, ...] = (3, 4)
    contrastive_concat: bool = False
    proj_dim: int = 2048
    byol_ema: float = 0.996
    freeze_epochs: int = 0
    steps_per_epoch: Optional[int] = None  # cap per epoch (quick budgets); None = whole set


class _PickLayers(nn.Module):
    """F seen as PatchCore's backbone: F's maps of the bank layers only."""

    def __init__(self, extractor: nn.Module, picks: list[int]):
        super().__init__()
        self.extractor, self.picks = extractor, list(picks)
        self.channels = [extractor.channels[i] for i in self.picks]
        self.weights = extractor.weights

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.extractor(images)
        return [feats[i] for i in self.picks]


@register_method("tocoad")
class ToCoAD(PatchCore):
    """DNP + NCL fine-tuning of the extractor, then PatchCore with eq. 8-9 patch re-weighting."""

    Config = ToCoADConfig
    PROFILES = {
        "paper": {},
        "quick": {
            "backbone": "tf_efficientnet_lite0.in1k",
            "dnp_width": 64,
            "proj_dim": 256,
            "batch_size": 8,
            "dnp_epochs": 2,
            "dnp_milestones": (2,),
            "ncl_epochs": 2,
            "steps_per_epoch": 5,
        },
        "convnext": {
            "backbone": "convnext_tiny.fb_in1k",
            "layers": (1, 2),
            "dnp_layers": (0, 1, 2),
            "contrastive_layers": (2, 3),
            "freeze_epochs": 20,
        },
    }
    produces_maps = True
    protocols = ("single",)

    def __init__(self, config: ToCoADConfig, context=None):
        super().__init__(config, context)  # PatchCore: validation, aggregator, bank fields
        cfg = self.config
        parse_ratio(cfg.synthetic_ratio)
        if not 0.0 <= cfg.lam <= 1.0:
            raise ConfigError(f"--set lam={cfg.lam}: must be in [0, 1]")
        if cfg.reweight_b < 1:
            raise ConfigError(f"--set reweight_b={cfg.reweight_b}: must be >= 1")
        self.trainer = None
        if cfg.stages != "none":
            self.trainer = ToCoADTrainer(
                cfg, weights=self.context.weights, allow_random_fallback=self.context.allow_random_weights,
                device=self.device, seed=self.context.seed, progress=self.context.progress,
            )
            # PatchCore's frozen extractor is replaced by the (to be fine-tuned) F
            self.backbone = _PickLayers(self.trainer.F, self.trainer.pick_bank)
        self.support: Optional[torch.Tensor] = None
        self.train_facts: dict = {}

    # --- training: stages I and II, then PatchCore's memory bank on F ---------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        cfg = self.config
        if self.trainer is not None:
            images = load_all_images(train_loader)
            if len(images) < 2:
                raise DataError("tocoad: stages I/II need at least 2 training images")
            t0 = time.perf_counter()
            if cfg.stages == "both":
                self.trainer.fit_dnp(images)
            t1 = time.perf_counter()
            # NCL only (Table 5, row 2): no pre-trained D, hence no negative guide: L_sym alone
            lam = cfg.lam if cfg.stages == "both" else 1.0
            self.trainer.fit_ncl(images, lam=lam)
            t2 = time.perf_counter()
            h = self.trainer.history
            self.train_facts = {
                "seconds_dnp": round(t1 - t0, 1),
                "seconds_ncl": round(t2 - t1, 1),
                "dnp_loss_first_last": [round(h["dnp_loss"][0], 4), round(h["dnp_loss"][-1], 4)] if h["dnp_loss"] else None,
                "ncl_sym_first_last": [round(h["ncl_sym"][0], 4), round(h["ncl_sym"][-1], 4)] if h["ncl_sym"] else None,
                "ncl_neg_first_last": [round(h["ncl_neg"][0], 4), round(h["ncl_neg"][-1], 4)] if h["ncl_neg"] else None,
                "projector_spread": [round(v, 4) for v in self.trainer.projector_spread(images[: cfg.batch_size])],
            }
            del images
        super().fit(train_loader)
        if cfg.reweight_per_patch:
            # N_b(c) for every bank entry c, once: its b nearest bank entries (itself included)
            b = min(int(cfg.reweight_b), int(self.bank.shape[0]))
            _, self.support = self.knn.search(self.bank, k=b)

    # --- scoring: eq. 8-9 on every patch ----------------------------------------------------
    def patch_scores(self, queries: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """[Q, D] patch embeddings -> [Q] re-weighted scores s_t (eq. 8-9)."""
        dist, idx = self.knn.search(queries, k=1)
        s_prime, nearest = dist[:, 0], idx[:, 0]
        out = torch.empty_like(s_prime)
        q = queries.cpu().float()
        for s in range(0, q.shape[0], chunk):
            sup = self.support[nearest[s : s + chunk]]  # [n, b]
            d = (q[s : s + chunk, None, :] - self.bank[sup]).norm(dim=-1)  # E(p_t, c'), [n, b]
            sp = s_prime[s : s + chunk]
            out[s : s + chunk] = (1.0 - torch.exp(sp - torch.logsumexp(d, dim=1))) * sp
        return out

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        if not self.config.reweight_per_patch:
            return super().predict(batch)
        if self.knn is None or self.support is None:
            raise RuntimeError("ToCoAD.predict() called before fit()")
        emb = self.embed(batch.images)
        b, d, h, w = emb.shape
        patch = self.patch_scores(emb.permute(0, 2, 3, 1).reshape(-1, d)).reshape(b, h * w)
        scores = patch.max(dim=1).values
        maps = F.interpolate(patch.reshape(b, 1, h, w), size=tuple(batch.images.shape[-2:]), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps, self.config.map_sigma).squeeze(1)
        return Prediction(scores=scores, maps=maps)

    # --- what the record says -----------------------------------------------------------------
    def num_parameters(self) -> int:
        """F (through the backbone wrapper) plus the training-only networks D and C."""
        total = super().num_parameters()
        if self.trainer is not None:
            total += sum(p.numel() for m in (self.trainer.D, self.trainer.C) for p in m.parameters())
        return total

    def record_extras(self) -> dict:
        cfg = self.config
        out = dict(super().record_extras())
        out.update({
            "stages": cfg.stages,
            "dnp_layers": list(cfg.dnp_layers),
            "contrastive_layers": list(cfg.contrastive_layers),
            "generator": cfg.generator,
            "anomaly_source": (self.trainer.G.texture.description if self.trainer is not None else None),
            "scoring": "eq8-9 per patch, b=%d" % cfg.reweight_b if cfg.reweight_per_patch else "patchcore",
            "ncl_lr_choice": "SimSiam linear scaling 0.05*16/256",
        })
        if self.trainer is not None:
            out["union_layers"] = list(self.trainer.union)
            h = self.trainer.history
            out["dnp_epoch_s"] = [round(v, 1) for v in h["dnp_epoch_s"]]
            out["ncl_epoch_s"] = [round(v, 1) for v in h["ncl_epoch_s"]]
        out.update(self.train_facts)
        return out
