"""ToCoAD: two-stage contrastive fine-tuning feeding a PatchCore memory bank (Liang et al., seed 002).

Method (Sec. 3, Fig. 2). An ImageNet extractor F is adapted to the target images in two
stages before a PatchCore memory bank is built on it:

I.  Discriminative network pre-training (DNP, Sec. 3.1): F frozen; an anomaly generator G
    rotates each normal image slightly and by k x 90 degrees and pastes a synthetic anomaly
    (Perlin mask x texture by default), every image (eq. 1); a discriminative network D,
    "an inverse WideResNet50" (Sec. 4.1), learns to segment it from F's maps with the focal
    loss L_dis (eq. 2; always focal, whatever ``neg_loss`` says).
II. Negative-guided contrastive learning (NCL, Sec. 3.2): D frozen; F fine-tuned jointly with a
    SimSiam network C on layers 3 and 4 (separate heads, adaptive average pooling, 3-layer
    projector shared by all views, 1-layer predictor, stop-gradient on the projector branch),
    loss ``L_ncl = lambda * L_sym + (1 - lambda) * L_neg`` (eq. 6). L_sym is eq. 5 exactly:
    ``2 / (M (M-1)) sum_i sum_{j != i} L_cossim(f^i, f^j)``, which for the paper's M = 2 views
    is ``D(p1, SG(z2)) + D(p2, SG(z1))`` (twice SimSiam's own loss); with two layers the
    per-layer L_sym are *averaged* (see ``_tocoad_networks.py`` for why). L_neg =
    focal loss (eq. 2) of the frozen D on new synthetic anomalies seen through the current F.
III. Inference (Sec. 3.3) IS PatchCore on the fine-tuned F: this class subclasses
    ``methods.patchcore.PatchCore`` and only swaps its frozen backbone for F, so the layer-2+3
    aggregation, coreset (10 %), faiss search and map are literally PatchCore's code. The patch
    score after training (stages ``both`` and ``ncl``) is eq. 8-9 applied to *every* patch:
    with c* the bank entry nearest to patch p and N_b(c*) the b = 9 bank entries nearest to c*
    (c* included, as anomalib's implementation of PatchCore's eq. 7 does; the paper does not
    say), ``s = (1 - exp(s') / sum_{c' in N_b(c*)} exp(|p - c'|)) * s'`` (log-sum-exp); the
    image score is the maximum patch score; the map is PatchCore's (bilinear upsampling of the
    patch scores, Gaussian sigma 4). ``reweight_per_patch=false`` hands scoring to PatchCore
    (nearest distance per patch, its ``reweight`` / ``num_neighbors`` options); by default
    ``reweight_per_patch`` follows ``stages``: true with training, false with ``stages=none``.

Switches, one per ablation row of the paper (each reachable with ``--set``):
* Table 5 ``stages``: ``none`` (no DNP, no NCL: the ImageNet F, PatchCore's bank and code),
  ``ncl`` (NCL without D, i.e. L_sym only, "trained with only normal augmented samples"; no D
  is built), ``both`` (default). ``stages=none`` IS ``methods.patchcore.PatchCore`` with the
  same settings (identical scores and maps; tests/test_textures_input.py and
  tests/test_tocoad.py assert it, also with PatchCore's ``reweight=true``): the paper's
  "without DNP and NCL" row is a PatchCore-like network, so ``reweight_per_patch``, left unset
  (None), follows ``stages`` (false with ``none``, true with ``ncl`` and ``both``, as before).
  Until issue 24 ``stages=none`` kept eq. 8-9 by default and equalled PatchCore only with
  ``--set reweight_per_patch=false``; ``--set reweight_per_patch=true`` still gives that
  variant (eq. 8-9 on ImageNet features).
* Table 4 ``contrastive_layers``: 4 / 2,3 / 2,4 / 2,3,4 / 3,4 (default).
* Table 6 ``lam`` x ``neg_loss``: every row is ``--set generator=cutpaste --set lam=L --set
  neg_loss=focal|ce`` with L in 0.1, 0.2, 0.5, 0.8, 0.9 (the paper ran its ablations with
  CutPaste); ``neg_loss`` changes L_neg only (CE = focal with gamma 0), never stage I's L_dis. ``lam`` must lie in [0, 1) with stages=both (1 would train D for
  nothing: that is stages=ncl).
* Table 7 ``generator``: ``cutpaste`` / ``nsa`` / ``perlin`` (default).
* Table 8 ``contrastive_concat``; Table 9 ``contrastive``: simsiam / byol (EMA target of F and
  the projector, momentum ``byol_ema``).

No silent options: an option set away from its dataclass default where it has no effect in
the chosen configuration (``lam`` with stages=ncl, ``anomaly_source`` with a non-Perlin
generator, ``byol_ema`` without byol, PatchCore's ``reweight`` / ``num_neighbors`` under eq.
8-9 ...) is a one-line ConfigError naming it, raised when the config is built, before any job
(``inert_rules`` lists every rule; ``adbench.config.reject_inert`` applies them). The
reference is the dataclass default, not the profile: ``--profile quick --set stages=ncl`` is an
error naming quick's D settings (``profile quick: key dnp_epochs=2 has no effect ...``).

Where each value comes from:
* Paper Sec. 4.1: wide_resnet50_2 ImageNet (timm ``wide_resnet50_2.tv_in1k``, the torchvision
  weights the official code loads); D = "inverse WideResNet50" with 2 output channels
  (``dnp_decoder=inverse``, ``_tocoad_inverse_resnet.py``: F's residual stages run backwards
  with transposed-conv up-sampling, concatenation of F's maps and 1x1 compression, 25.8 M
  parameters for layers 1-3 with WRN50's 3, 4, 6 blocks); coreset 0.1; DNP Adam 1e-4 x0.2
  "from 80 epochs to 90 epochs" (read as milestones 80 and 90), 100 epochs; NCL SGD momentum
  0.9, weight decay 1e-4, cosine annealing, 100 epochs (150 on BTAD: ``--set
  ncl_epochs=150``); batch 16; resize 256, centre crop 224; layers 2+3 for the bank; lambda 0.5
  (Table 6); SimSiam on layers 3+4 without concatenation (Tables 4, 8); M = 2 views (Sec. 3.2).
* SimSiam's view recipe (the paper: "the same approach as [40]"; ``_tocoad_views``):
  random resized crop scale (0.2, 1), colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2,
  Gaussian blur sigma (0.1, 2) with p 0.5 (kernel 10 % of the side: 23 px at 224), horizontal
  flip p 0.5; drawn from a generator seeded by the job seed.
* Not given by the paper, our choices:
  - ``dnp_layers = (1, 2, 3)`` (strides 4, 8, 16): D reads the two bank layers, so L_neg's
    gradient in stage II reaches exactly the features the memory bank uses, plus layer 1 for
    the stride-4 detail a pixel mask needs (the decoder of an inverse ResNet ends there).
    Layer 4 is left out: it is not in the bank, and SimSiam already trains it. Recorded in
    ``record_extras``; ``--set dnp_layers=...`` changes it (then also ``dnp_blocks``).
  - ``dnp_decoder=light`` (option): the earlier 1.1 M-parameter feature-pyramid decoder,
    widths from ``dnp_width`` (256 at the deepest input, halved per level up).
  - ``ncl_lr = 0.003``: SimSiam's linear scaling rule, base lr 0.05 x batch 16 / 256 = 0.003125,
    rounded; it is also small enough not to wreck ImageNet features in a fine-tuning run.
  - Projector/predictor width 2048 (SimSiam's); predictor = one Linear (the paper: "1-layer").
  - F's batch-norm layers keep ImageNet statistics in stage II (affine parameters train); see
    ``ToCoADTrainer.fit_ncl``.
  - Slight rotation: U(-10, 10) degrees (the paper only says "slight").
  - Every training image gets an anomaly (eq. 1: T_G = G(I_i) for all i): ``synthetic_ratio
    1:0``; Perlin masks are redrawn until non-empty. Seed 000's 1:1 (and 1:2, 2:1) are options.
  - Anomaly source (issue 24): the paper pastes DTD images (Sec. 3.1, ref. [50]), so the
    ``paper`` and ``convnext`` profiles (stages=both, generator=perlin) need a DTD copy, given
    like weights: ``--textures DIR`` (or ``$ADBENCH_TEXTURES_DIR``), DTD's
    ``images/<class>/*.jpg`` layout, checked before any job; without it the run stops with one
    exit-2 line naming the method and profile (until issue 24 it silently pasted procedural
    textures). ``quick`` without ``--textures`` and ``--set anomaly_source=procedural`` draw
    procedural textures with a note (not DTD: numbers not comparable with the paper's).
    ``anomaly_source`` takes only ``procedural``; the runner binds the set into it, and the
    config hash keeps the set's fingerprint (sha256 of its sorted relative names and sizes)
    and image count, not its folder (``ToCoADConfig.config_hash``). Records state
    ``anomaly_source`` and ``texture_set`` (fingerprint, image count). G's rule is DRAEM's:
    ``I_G = (1 - M) I_R + M ((1 - beta) A + beta I_R)``, beta ~ U[0, 0.8), on the rotated image
    I_R (``synth.perlin_texture_anomaly``).
* Seed 000 extensions (a related augmented-patch method's supplement; all off in ``paper``):
  - ``convnext`` profile: backbone ``convnext_tiny.fb_in1k``. Seed 000 says "pre-trained
    ConvNeXt" of several sizes without naming weights; fb_in1k is the original ConvNeXt
    ImageNet-1k release (convnext_tiny_1k_224_ema.pth), the same ImageNet-1k pretraining as
    every other method here (the lead's choice). timm's ConvNeXt feature index i has stride
    2**(i+2) (its stem is a stride-4 patchify), so the profile shifts every layer index by one
    to keep the strides of the ResNet defaults: bank (1, 2) = strides 8, 16; D (0, 1, 2) =
    strides 4, 8, 16 with ``dnp_blocks`` 3, 3, 9 (convnext_tiny's stage depths); contrastive
    (2, 3) = strides 16, 32. ``freeze_epochs=20``: F frozen for the first 20 NCL epochs (seed
    000's default), during which C still trains on L_sym; then F is fine-tuned.
  - ``generator=patch`` with ``patch_source=same|other`` and ``patch_transform=jitter|pepper``;
    ``generator=cutout`` (seed 000 Sec. 1.4: a box filled with ``cutout_fill``, mask = the box);
    ``synthetic_ratio`` 1:1 / 1:0 / 1:2 / 2:1.

``quick`` profile: tf_efficientnet_lite0 (offline ImageNet weights), PatchCore's geometry,
layers and coreset, the paper's inverse D built on lite0 (blocks 2, 2, 6: lite0's own block
counts between strides 2-4, 4-8 and 8-16; 0.27 M parameters), heads 256-d, batch 8, 2 DNP + 2
NCL epochs of at most 5 steps each (a token fine-tuning: 40 synthetic + 80 view images per
stage; enough to exercise the pipeline on real data on a shared 2-core CPU, far too little to
expect the paper's gain). The inverse D costs little here, so quick keeps it: measured on the
shared 2-core CPU at 224 px, batch 8, a stage-I step takes 2.7-4.6 CPU-s against 1.8-2.1 for
the light D (width 64), and an L_neg forward+backward 5.6-6.2 against 4.9-6.4 CPU-s (F's
backward dominates), i.e. some 10-20 s over quick's 10 + 10 steps. Batch 16 in stage II was
killed by the out-of-memory killer on the shared 23 GiB machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from adbench.components.blur import gaussian_blur
from adbench.components.textures import location_free, requested_source
from adbench.config import MethodConfig
from adbench.methods._tocoad_training import ToCoADTrainer, parse_ratio
from adbench.data import Batch
from adbench.detector import Prediction
from adbench.errors import ConfigError, DataError, FewShotError
from adbench.registry import register_method
from adbench.methods.patchcore import PatchCore, PatchCoreConfig


@dataclass
class ToCoADConfig(PatchCoreConfig):
    # switches of Table 5: none = no training (PatchCore's bank), ncl = NCL only (L_sym), both
    stages: Literal["none", "ncl", "both"] = "both"
    # eq. 8-9 on every patch (b = reweight_b); false: PatchCore's scoring; None (unset): follows
    # stages, false with none (which then IS PatchCore), true with ncl and both
    reweight_per_patch: Optional[bool] = None
    # stage I (DNP)
    dnp_decoder: Literal["inverse", "light"] = "inverse"  # D: inverse ResNet (Sec. 4.1) or the light decoder
    dnp_layers: tuple[int, ...] = (1, 2, 3)
    dnp_blocks: tuple[int, ...] = (3, 4, 6)  # inverse D: blocks per stage, as dnp_layers (WRN50 layers 1-3)
    dnp_width: int = 256  # light D only
    dnp_epochs: int = 100
    dnp_lr: float = 1e-4
    dnp_milestones: tuple[int, ...] = (80, 90)
    dnp_gamma: float = 0.2
    generator: Literal["perlin", "cutpaste", "nsa", "patch", "cutout"] = "perlin"
    # None: the run's texture set (--textures DIR, DTD in the paper; quick without one:
    # procedural); "procedural": procedural textures. The runner binds --textures in here.
    anomaly_source: Optional[str] = None
    patch_source: Literal["same", "other"] = "same"
    patch_transform: Literal["jitter", "pepper", "none"] = "jitter"
    cutout_fill: Literal["grey", "mean", "random"] = "grey"
    synthetic_ratio: str = "1:0"
    rotate_degrees: float = 10.0
    rotate90: bool = True
    neg_loss: Literal["focal", "ce"] = "focal"  # L_neg only (Table 6); L_dis is always focal
    focal_gamma: float = 2.0
    # stage II (NCL)
    ncl_epochs: int = 100
    ncl_lr: float = 0.003
    ncl_momentum: float = 0.9
    ncl_weight_decay: float = 1e-4
    ncl_views: int = 2  # M of eq. 5
    lam: float = 0.5
    contrastive: Literal["simsiam", "byol"] = "simsiam"
    contrastive_layers: tuple[int, ...] = (3, 4)
    contrastive_concat: bool = False
    proj_dim: int = 2048
    byol_ema: float = 0.996
    freeze_epochs: int = 0
    steps_per_epoch: Optional[int] = None  # cap per epoch (quick budgets); None = whole set

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # PatchCore's own checks, where it has them
            parent()
        if self.reweight_per_patch is None:  # follows stages: stages=none is PatchCore
            self.reweight_per_patch = self.stages != "none"
        check_config(self)

    def config_hash(self) -> str:
        """The resolved values' hash with a bound texture set's fingerprint and image count in
        place of its folder (``adbench.components.textures.location_free``)."""
        return MethodConfig.config_hash(location_free(self))

    def inert_options(self) -> dict[str, str]:
        """PatchCore's rules for the memory bank, then ToCoAD's own (``inert_rules``): its
        per-patch rule (eq. 8-9) reads ``reweight_b`` whatever PatchCore's ``reweight`` says."""
        out = super().inert_options()
        if self.reweight_per_patch:
            out.pop("reweight_b", None)
        for name, inert, why in inert_rules(self):
            if inert:
                out[name] = why
        return out


# option groups for the no-silent-options rules
_GENERATOR = ("generator", "anomaly_source", "patch_source", "patch_transform", "cutout_fill", "synthetic_ratio",
              "rotate_degrees", "rotate90")
_DNP = ("dnp_decoder", "dnp_layers", "dnp_blocks", "dnp_width", "dnp_epochs", "dnp_lr", "dnp_milestones",
        "dnp_gamma", "focal_gamma", "neg_loss", "lam")
_CONTRASTIVE = ("contrastive", "contrastive_layers", "contrastive_concat", "proj_dim", "byol_ema", "ncl_views")
_NCL = ("ncl_epochs", "ncl_lr", "ncl_momentum", "ncl_weight_decay", "freeze_epochs", "steps_per_epoch")


def inert_rules(cfg: ToCoADConfig) -> list[tuple[str, bool, str]]:
    """``(option, has no effect here, why)`` for every ToCoAD option that some configuration
    ignores; ``ToCoADConfig.inert_options`` collects the inert ones and ``resolve_config`` turns
    one the user set into a ConfigError (``adbench.config.reject_inert``)."""
    rules: list[tuple[str, bool, str]] = []

    def add(names, inert: bool, why: str) -> None:
        rules.extend((name, bool(inert), why) for name in names)

    gen = cfg.generator
    if cfg.stages == "none":
        add(_NCL + _CONTRASTIVE + _DNP + _GENERATOR, True,
            "with stages=none (no training: the ImageNet extractor and PatchCore's bank)")
    if cfg.stages == "ncl":
        add(_DNP + _GENERATOR, True, "with stages=ncl (NCL without a discriminative network: L_sym only)")
    add(_CONTRASTIVE, cfg.stages == "both" and cfg.lam == 0, "with lam=0 (L_sym has no weight in eq. 6)")
    add(("anomaly_source",), gen != "perlin", f"with generator={gen} (only perlin fills its mask from a texture)")
    add(("patch_source", "patch_transform"), gen != "patch", f"with generator={gen} (they belong to generator=patch)")
    add(("cutout_fill",), gen != "cutout", f"with generator={gen} (it belongs to generator=cutout)")
    add(("byol_ema",), cfg.contrastive != "byol", f"with contrastive={cfg.contrastive} (no EMA target)")
    add(("contrastive_concat",), len(set(cfg.contrastive_layers)) < 2, "with a single contrastive layer")
    decays = [m for m in cfg.dnp_milestones if 0 < int(m) < cfg.dnp_epochs]
    add(("dnp_milestones", "dnp_gamma"), not decays,
        f"with dnp_epochs={cfg.dnp_epochs} (no milestone falls inside stage I: the learning rate never decays)")
    add(("dnp_width",), cfg.dnp_decoder != "light", "with dnp_decoder=inverse (its widths are F's channels)")
    add(("dnp_blocks",), cfg.dnp_decoder != "inverse", "with dnp_decoder=light (no residual stages)")
    add(("reweight", "num_neighbors", "reweight_rule", "map_upsample"), cfg.reweight_per_patch,
        "with reweight_per_patch=true (ToCoAD scores every patch with eq. 8-9, k = 1, bilinear map)")
    add(("reweight_b",), not cfg.reweight_per_patch and not cfg.reweight,
        "with reweight_per_patch=false and reweight=false (no re-weighting)")
    return rules


def check_config(cfg: ToCoADConfig) -> None:
    """Value checks, run when the config is built, so a bad combination stops the run before
    any job starts (the no-silent-options rules are ``inert_rules``)."""
    parse_ratio(cfg.synthetic_ratio)
    if not 0.0 <= cfg.lam <= 1.0:
        raise ConfigError(f"--set lam={cfg.lam}: must be in [0, 1]")
    if cfg.stages == "both" and cfg.lam == 1.0:
        raise ConfigError("--set lam=1.0: with stages=both L_neg gets no weight and D is trained for nothing; "
                          "use stages=ncl (Table 5's NCL-only row)")
    if cfg.reweight_b < 1:
        raise ConfigError(f"--set reweight_b={cfg.reweight_b}: must be >= 1")
    if cfg.ncl_views < 2:
        raise ConfigError(f"--set ncl_views={cfg.ncl_views}: eq. 5 needs M >= 2 views")
    if cfg.freeze_epochs < 0:
        raise ConfigError(f"--set freeze_epochs={cfg.freeze_epochs}: must be >= 0")
    if cfg.stages == "both" and cfg.dnp_decoder == "inverse" and len(cfg.dnp_blocks) != len(set(cfg.dnp_layers)):
        raise ConfigError(f"--set dnp_blocks={','.join(map(str, cfg.dnp_blocks))}: needs one block count per "
                          f"dnp_layers entry ({','.join(map(str, cfg.dnp_layers))})")


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
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 3  # 2: resumable stages, data order by (seed, stage, epoch); 3: anomalies seeded per (seed, stage, epoch, image)
    Config = ToCoADConfig
    PROFILES = {
        "paper": {},
        "quick": {
            "backbone": "tf_efficientnet_lite0.in1k",
            "dnp_blocks": (2, 2, 6),  # lite0's blocks between strides 2-4, 4-8, 8-16
            "proj_dim": 256,
            "batch_size": 8,
            "dnp_epochs": 2,
            "ncl_epochs": 2,
            "steps_per_epoch": 5,
            # PatchCore's quick bank (true-distance ranking); paper/convnext use the official
            # selection PatchCore's paper profile now has (issue 24)
            "coreset_true_distance": True,
        },
        "convnext": {
            "backbone": "convnext_tiny.fb_in1k",
            "layers": (1, 2),
            "dnp_layers": (0, 1, 2),
            "dnp_blocks": (3, 3, 9),
            "contrastive_layers": (2, 3),
            "freeze_epochs": 20,
        },
    }
    produces_maps = True
    protocols = ("single",)

    @classmethod
    def check_shots(cls, config, shots: int) -> None:
        """Stages I/II contrast training images against each other: at least two are needed
        (``stages=none``, PatchCore on the same features, fits one)."""
        if shots < 2 and config.stages != "none":
            raise FewShotError(f"{cls.name}: {shots}-shot: "
                               "stages I/II contrast training images with each other and need at least 2")

    @classmethod
    def texture_source(cls, config: ToCoADConfig) -> Optional[str]:
        """``dtd`` (the run's texture set) for G's Perlin anomalies unless
        ``anomaly_source=procedural``; None when G pastes no texture (stages none / ncl, or
        another generator)."""
        if config.stages != "both" or config.generator != "perlin":
            return None
        return requested_source(config.anomaly_source)

    def __init__(self, config: ToCoADConfig, context=None):
        super().__init__(config, context)  # PatchCore: validation, aggregator, bank fields
        cfg = self.config
        self.trainer = None
        if cfg.stages != "none":
            self.trainer = ToCoADTrainer(
                cfg, weights=self.context.weights, allow_random_fallback=self.context.allow_random_weights,
                device=self.device, seed=self.context.seed, progress=self.context.progress,
                checkpoints=self.context.checkpoints, autocast=self.context.autocast, inputs=self.context.inputs,
            )
            # PatchCore's frozen extractor is replaced by the (to be fine-tuned) F
            self.backbone = _PickLayers(self.trainer.F, self.trainer.pick_bank)
        self.support: Optional[torch.Tensor] = None
        self.train_facts: dict = {}

    # --- training: stages I and II, then PatchCore's memory bank on F ---------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Stages I and II on F (each resumable), then PatchCore's memory bank on F (the job's
        final checkpoint: a resumed job embeds no training image again)."""
        cfg = self.config
        if self.trainer is not None:
            checkpoints = self.context.checkpoints
            stages = ("dnp", "ncl") if cfg.stages == "both" else ("ncl",)
            trained = all(checkpoints.finished(s) for s in stages)
            images = None if trained else self.context.training_images(train_loader)  # decoded once per job
            if images is not None and len(images) < 2:
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
            }
            if images is not None:
                self.train_facts["projector_spread"] = [
                    round(v, 4) for v in self.trainer.projector_spread(images[: cfg.batch_size])]
            del images
        decoded = self.context.decoded  # the stages' decode, if they ran: the bank reads it too
        exact = decoded is not None and decoded.exact  # (batches of arbitrary floats are not uint8)
        super().fit(decoded.loader(self.config.batch_size) if exact else train_loader)
        if cfg.reweight_per_patch:
            # N_b(c) for every bank entry c, once: its b nearest bank entries (itself included)
            b = min(int(cfg.reweight_b), int(self.bank.shape[0]))
            _, self.support = self.knn.search(self.bank, k=b)

    # --- scoring: eq. 8-9 on every patch ----------------------------------------------------
    def patch_scores(self, queries: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """[Q, D] patch embeddings -> [Q] re-weighted scores s_t (eq. 8-9); N_b is computed on
        first use where ``fit`` did not (``reweight_per_patch=false`` scores with PatchCore)."""
        if self.support is None:
            _, self.support = self.knn.search(self.bank, k=min(int(self.config.reweight_b), int(self.bank.shape[0])))
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
            total += sum(p.numel() for m in (self.trainer.D, self.trainer.C) if m is not None for p in m.parameters())
        return total

    def record_extras(self) -> dict:
        cfg = self.config
        out = dict(super().record_extras())
        out.update({
            "stages": cfg.stages,
            "dnp_layers": list(cfg.dnp_layers),
            "contrastive_layers": list(cfg.contrastive_layers),
            "generator": cfg.generator,
            "dnp_decoder": cfg.dnp_decoder if cfg.stages == "both" else None,
            "d_parameters": (sum(p.numel() for p in self.trainer.D.parameters())
                             if self.trainer is not None and self.trainer.D is not None else None),
            "l_sym": f"eq. 5, M={cfg.ncl_views}, mean over {len(cfg.contrastive_layers)} layer head(s)",
            "anomaly_source": (self.trainer.G.texture.description
                               if cfg.stages == "both" and cfg.generator == "perlin" else None),
            "texture_set": (self.trainer.G.texture.facts()
                            if cfg.stages == "both" and cfg.generator == "perlin" else None),
            "scoring": (f"eq8-9 per patch, b={cfg.reweight_b}" if cfg.reweight_per_patch
                        else f"patchcore (reweight={cfg.reweight}, num_neighbors={cfg.num_neighbors})"),
            "ncl_lr_choice": "SimSiam linear scaling 0.05*16/256",
        })
        if self.trainer is not None:
            out["union_layers"] = list(self.trainer.union)
            h = self.trainer.history
            out["dnp_epoch_s"] = [round(v, 1) for v in h["dnp_epoch_s"]]
            out["ncl_epoch_s"] = [round(v, 1) for v in h["ncl_epoch_s"]]
            out["ncl_extractor_trained_epochs"] = int(sum(h["ncl_extractor_trained"]))
        out.update(self.train_facts)
        return out
