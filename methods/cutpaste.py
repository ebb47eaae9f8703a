"""CutPaste (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection
and Localization", CVPR 2021), image level.

Method (paper sections 2.1-2.3, 4, appendix A):

1. Self-supervised training (sec. 2.1-2.2). A CNN (ResNet-18 from scratch) with an MLP
   projection head on its average-pooled features and a last linear layer learns to tell normal
   images from images augmented by CutPaste (a box cut and pasted elsewhere) and CutPaste-Scar
   (a thin rotated box): a 3-way classification with cross-entropy on the logits (no softmax
   before the loss). Augmentation parameters are in ``adbench.components.synth`` (appendix A.2:
   area ratio (0.02, 0.15), aspect (0.3, 1) U (1, 3.3), scar width [2, 16] px, length [10, 25]
   px, rotation (-45, 45), colour jitter 0.1 on the patch).
2. Optimisation (appendix A.1): SGD lr 0.03, momentum 0.9, weight decay 3e-5, a single cosine
   cycle, 256 "epochs" of 256 steps (the paper's epoch is 256 updates), batch "64 (or 96 for
   3-way)". ``batch_size`` counts augmented samples: every image of a step appears in each
   class, so the paper's batches are 32 images x 2 classes = 64 and 32 x 3 = 96; the default
   ``batch_size=None`` resolves to 32 x (number of classes) of ``mode`` (rotation: 32 x 4 =
   128, our extension of that rule; the paper gives no rotation batch) and the resolved value
   is what the config and the record hold. Random translation and colour jitter are applied to
   the input before CutPaste (A.1).
3. Scoring (sec. 2.3, eq. 2): a Gaussian density estimator (mean + Ledoit-Wolf covariance, as
   the paper's scikit-learn implementation) of the average-pooled encoder features (512-d for
   ResNet-18, *before* the head), computed once with the final encoder over the training images
   (not accumulated across epochs); score = Mahalanobis distance. Section 4 applies this GDE to
   every representation of its tables (rotation and cutout baselines included), and so do we.
   ``gde_l2_normalize`` (default False): L2-normalise the pooled features first, as the
   released GDE code of the paper's reference [52] does (DROC,
   google-research/deep_representation_one_class ``util/train.py`` l.575-578); the paper does
   not say. Measured on MVTec bottle, ``quick`` profile, seeds 0/1/2: image AUROC 99.68 /
   99.37 / 99.92 (mean 99.66 +- 0.16) with and without it, identical per seed (training is the
   same; on seed 0's model the two score vectors have Spearman 0.998, and the feature norm,
   which L2 removes, alone gives 88.8). Paper, bottle: 98.3 +- 0.5 (table 1, 3-way from
   scratch), 100.0 (table 3, B4 fine-tuned, pool). Neither choice lands closer on bottle; the
   default stays the paper's text (no normalisation).
4. Pretrained variant (sec. 4.3, appendix A.4, profile ``paper_pretrained``): EfficientNet-B4
   ImageNet; the MLP head alone for 10 epochs at lr 0.03, then all layers for 64 epochs at lr
   1e-4 with batch-norm frozen "as suggested by the Keras guide", batch 24. Frozen means what
   Keras ``trainable=False`` does to a BatchNormalization layer: inference mode (running
   statistics used and not updated) *and* gamma/beta not trained; ``freeze_bn`` does both for
   every batch-norm layer of the encoder (the MLP head's own batch-norm layers are new layers
   and train). Weights: ``tf_efficientnet_b4.aa_in1k``. The paper used Keras'
   ``EfficientNetB4(weights="imagenet")``, whose h5 files are the TF/TPU AutoAugment checkpoint
   (``ckptsaug/efficientnet-b4``, top-1 82.9 %, per the keras-io fine-tuning example by the
   author of tf.keras EfficientNet and the keras.io applications table); timm's ``aa_in1k`` tag
   is the port of that same checkpoint (top-1 83.0 % in timm). Same provenance, different
   serialisation (not byte-compared). Known difference we do not reproduce: tf.keras <= 2.8
   normalised EfficientNet inputs with the standard deviation where the variance was meant
   (keras commit d2b35430, first in keras 2.9), so 2021-era Keras code fed (x - mean) /
   sqrt(std) instead of (x - mean) / std; we normalise with timm's pretrained_cfg mean/std.
5. Ensemble (sec. 4.1, table 1 "Ensemble", 96.1): ``ensemble`` = N trains N models in one job
   (member i is seeded with job seed + i: its weight init, augmentation stream and input
   order) and averages their anomaly scores. Raw Mahalanobis distances are averaged: each is
   already whitened by its own member's covariance (for normal data about sqrt(d) with the same
   d for every member), so no member dominates by scale, and normalising further would need
   scores of held-out normal images, which a one-class training set does not have (in-sample
   training distances are biased low). The paper only says "ensembling anomaly scores". The
   record names every member (seed and training summary). Profile ``paper_ensemble``.
6. Features of other levels (sec. 4.3, table 3 "Level-7", after Rippel et al., refs [30, 43]):
   ``feature_level`` = ``levelN`` average-pools the output of EfficientNet level N instead of
   the final pooled features, for the GDE only (training is unchanged; table 3 evaluates the
   same fine-tuned model on both features). Levels as Rippel et al. count them, 1..9: 1 = stem,
   2..8 = the seven MBConv stages, 9 = head convolution (= ``pool``). In timm: level 1 =
   ``conv_stem``/``bn1``, level N (2..8) = the output of ``blocks[N - 2]``, so the paper's
   level 7 = ``blocks[5]`` (272 channels in B4, 192 in lite0). Rippel et al.'s code numbers the
   same levels 0..8; a reader who takes "level-7" in that numbering gets ``level8``
   (``blocks[6]``, 448 channels in B4). EfficientNet backbones only.

Proxy tasks of the paper's tables (``mode``; see ``CutPasteSampler`` for the class layout):
``3way`` (default; tables 1/5 "CutPaste (3-way)"), ``binary`` (table 1/4/5 "CutPaste"),
``scar`` (table 1/5 "CutPaste (scar)": kept name, it is CutPaste-Scar, an image patch),
``union`` (table 5 "Binary (Union)"), ``rotation`` (table 1 "Rotation": 4-way 0/90/180/270,
refs [19, 20]; scored, as in ref. [52]'s code and sec. 4, by the GDE on pooled features of the
unrotated image, not by the rotation classifier), ``cutout`` (table 1 "Cutout" = table 4
"Cutout": box of CutPaste's size filled grey; ``cutout_fill=mean`` table 4 "Cutout (Mean)": the
image's mean colour, ``cutout_fill=random`` "Cutout (Color)"), ``scar_cutout`` (table 1 "Scar":
ref. [16]'s random-colour scar, at CutPaste-Scar's sizes and rotation, as sec. 3.1 compares them
"with the same scale"), ``confetti`` (table 4 "Confetti", FCDD's noise, see
``synth.confetti``). Every mode trains with the same recipe (A.1: "the same training strategy
... is applied").

No silent options: an option set away from its default where this configuration never reads
it is a ``ConfigError`` (``inert_options``; e.g. ``freeze_bn`` without ``pretrained``, scar
sizes in a mode without scars, ``cutout_fill`` outside ``cutout``).

No anomaly map: the paper's image-level model only gives GradCAM visualisations, which are not
a localisation method; ``produces_maps = False`` and records carry no pixel metrics.
Localisation is the patch-level model, ``cutpaste_patch``.

Our choices where the paper is silent (CutPaste's code was never released; its authors'
earlier DROC code [52] is the closest released reference):
* MLP head: ``head_dims`` (512 x 8, 128) as in DROC's released scripts
  (``script/run_contrastive.sh``: "--head_dims=512,512,512,512,512,512,512,512,128"), each
  hidden layer Linear-BN-ReLU;
* input translation up to ``translate`` (10 %) of the side with reflect padding, input colour
  jitter ``input_jitter`` = 0.1 (brightness, contrast, saturation, hue);
* measured cost of the ``paper`` profile on this 2-core CPU: 15.4 CPU-seconds per step
  (ResNet-18, 256 px, batch 96, one thread; 178 s wall under a load of ~20), i.e. ~1.1 CPU-hours
  per 256-step epoch and ~12 CPU-days for the paper's 256 epochs: it is meant for a GPU.
* ``area_ratio`` and the scar sizes are options (the paper's table 8 varies the patch size);
  defaults are the paper's.

CPU profiles: ``quick`` follows the EfficientNet recipe with tf_efficientnet_lite0 (the only
ImageNet weights available offline here) at 128 px and 45 steps; ``quick_scratch`` is the
from-scratch ResNet-18 at a CPU budget.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Iterable, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.gde import GaussianDensity
from adbench.components.synth import CutPasteSampler, color_jitter
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.data.batch_stream import BatchStream, sample_rng, to_device
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError, DataError, FewShotError
from adbench.precision import full
from adbench.registry import register_method
from adbench.weights import NO_WEIGHTS, WeightsInfo, exact_tag, load_pretrained

#: images per step in the paper's batches: 64 = 32 x 2 (two-class modes), 96 = 32 x 3 (3-way)
PAPER_IMAGES_PER_STEP = 32

Mode = Literal["3way", "binary", "scar", "union", "rotation", "cutout", "scar_cutout", "confetti"]
FeatureLevel = Literal["pool", "level1", "level2", "level3", "level4", "level5", "level6", "level7", "level8"]

#: the augmentation options each mode reads (config names); any other is inert in that mode
MODE_OPTIONS = {
    "3way": {"area_ratio", "patch_jitter", "scar_width", "scar_length"},
    "binary": {"area_ratio", "patch_jitter"},
    "scar": {"patch_jitter", "scar_width", "scar_length"},
    "union": {"area_ratio", "patch_jitter", "scar_width", "scar_length"},
    "rotation": set(),
    "cutout": {"area_ratio", "cutout_fill"},
    "scar_cutout": {"scar_width", "scar_length"},
    "confetti": set(),
}
AUGMENTATION_OPTIONS = ("area_ratio", "patch_jitter", "scar_width", "scar_length", "cutout_fill")


@dataclass
class CutPasteConfig(MethodConfig):
    image_size: int = 256
    batch_size: Optional[int] = None  # None: 32 images x classes of ``mode`` (64 / 96 / 128)
    mode: Mode = "3way"
    backbone: str = "resnet18"
    pretrained: bool = False
    head_dims: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512, 512, 128)
    epochs: int = 256
    steps_per_epoch: int = 256
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 3e-5
    head_only_epochs: int = 0
    finetune_lr: float = 1e-4
    freeze_bn: bool = False
    patch_jitter: float = 0.1
    area_ratio: tuple[float, float] = (0.02, 0.15)
    scar_width: tuple[int, int] = (2, 16)
    scar_length: tuple[int, int] = (10, 25)
    cutout_fill: Literal["grey", "mean", "random"] = "grey"
    input_jitter: float = 0.1
    translate: float = 0.1
    feature_level: FeatureLevel = "pool"
    gde_l2_normalize: bool = False
    ensemble: int = 1
    embed_batch_size: int = 32
    num_threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.batch_size is None:  # appendix A.1: 64 for two classes, 96 for 3-way
            self.batch_size = PAPER_IMAGES_PER_STEP * CutPasteSampler.MODES.get(self.mode, 3)
        self.check()  # while configs are resolved: exit 2 before any job starts

    def inert_rules(self) -> list[tuple[str, bool, str]]:
        """``(option, inert, why)``: what this configuration never reads. A config that
        inherits this one and ignores more (the patch-level model) extends the list."""
        return inert_rules_of(self)

    def inert_options(self) -> dict[str, str]:
        """The inert options of ``inert_rules`` (``resolve_config`` rejects one the user set)."""
        out: dict[str, str] = {}
        for name, inert, why in self.inert_rules():
            if inert:
                out.setdefault(name, why)
        return out

    def check(self) -> None:
        """Values that cannot work: one-line ConfigErrors (ignored options: ``inert_options``)."""
        if self.mode not in CutPasteSampler.MODES:
            raise ConfigError(f"--set mode={self.mode}: expected one of {', '.join(CutPasteSampler.MODES)}")
        if self.ensemble < 1:
            raise ConfigError(f"--set ensemble={self.ensemble}: must be >= 1")
        if self.batch_size < CutPasteSampler.MODES[self.mode]:
            raise ConfigError(f"--set batch_size={self.batch_size}: below one image per class of mode={self.mode}")
        if self.feature_level != "pool" and not is_efficientnet(self.backbone):
            raise ConfigError(f"--set feature_level={self.feature_level}: levels are EfficientNet levels "
                              f"(Rippel et al.), not defined for backbone={self.backbone}")


def is_efficientnet(name: str) -> bool:
    """Whether a timm name is an EfficientNet (B0-B8, lite, TF ports): the 7-stage layout that
    Rippel et al.'s levels refer to."""
    arch = str(name).split(".")[0]
    return arch.startswith(("efficientnet_", "tf_efficientnet_"))


#: what only training reads: all inert when epochs=0 (the GDE then sees the initial encoder;
#: the head-only phase alone never changes the encoder, hence never the GDE's features)
TRAINING_OPTIONS = ("mode", "head_dims", "steps_per_epoch", "lr", "momentum", "weight_decay", "head_only_epochs",
                    "finetune_lr", "freeze_bn", *AUGMENTATION_OPTIONS, "input_jitter", "translate")


def inert_rules_of(cfg: CutPasteConfig) -> list[tuple[str, bool, str]]:
    """``(option, inert, why)`` rules of this configuration (``CutPasteConfig.inert_options``)."""
    if cfg.epochs == 0:
        why = "with epochs=0 (no encoder training: the GDE sees the initial encoder)"
        return [(name, True, why) for name in TRAINING_OPTIONS] + [
            ("ensemble", cfg.pretrained, "with epochs=0 and pretrained=true (every member would be the same network)")]
    rules = [
        ("head_only_epochs", not cfg.pretrained, "with pretrained=false (the head-only phase is the pretrained recipe, A.4)"),
        ("freeze_bn", not cfg.pretrained, "with pretrained=false (frozen batch-norm is the pretrained recipe, A.4)"),
        ("finetune_lr", not cfg.pretrained, "with pretrained=false (it is the fine-tuning lr of the pretrained recipe)"),
        ("finetune_lr", cfg.head_only_epochs == 0,
         "with head_only_epochs=0 (it is the lr after the head-only phase; lr is used)"),
    ]
    used = MODE_OPTIONS[cfg.mode]
    for name in AUGMENTATION_OPTIONS:
        rules.append((name, name not in used, f"with mode={cfg.mode} (that mode does not use it)"))
    return rules


def load_encoder(name: str, pretrained: bool, weights: Optional[str], allow_fallback: bool) -> tuple[nn.Module, WeightsInfo]:
    """timm model with its classifier removed (``num_classes=0``: forward = pooled features).

    ``name`` is an exact timm tag; its weights follow adbench's rule (``adbench.weights``).
    ``pretrained=False`` is the paper's from-scratch training (no weights are looked for).
    """
    import timm

    tag = exact_tag(name)
    model = timm.create_model(tag, pretrained=False, num_classes=0)
    if not pretrained:
        return model, WeightsInfo("random", "from scratch")
    info = load_pretrained(model, tag, weights, allow_random_fallback=allow_fallback,
                           full_model_factory=lambda: timm.create_model(tag, pretrained=True, num_classes=0))
    return model, info


class CutPasteNet(nn.Module):
    """Encoder (pooled features) + MLP projection head + linear classifier."""

    def __init__(self, encoder: nn.Module, head_dims: tuple[int, ...], num_classes: int):
        super().__init__()
        self.encoder = encoder
        cfg = getattr(encoder, "pretrained_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        width = encoder.num_features
        for i, dim in enumerate(head_dims):
            layers.append(nn.Linear(width, dim))
            if i < len(head_dims) - 1:
                layers += [nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
            width = dim
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Average-pooled encoder features of images in [0, 1] (the GDE's input)."""
        return self.encoder((images - self.mean) / self.std)

    def level_features(self, images: torch.Tensor, level: int) -> torch.Tensor:
        """Average-pooled output of EfficientNet level ``level`` (Rippel et al.'s 1..9: 1 = stem,
        2..8 = ``blocks[level - 2]``, 9 = head convolution = ``embed``) of images in [0, 1]."""
        enc = self.encoder
        if not all(hasattr(enc, name) for name in ("conv_stem", "bn1", "blocks")) or len(enc.blocks) != 7:
            raise ConfigError(f"--set feature_level=level{level}: the encoder is not a 7-stage EfficientNet")
        if level >= 9:
            return self.embed(images)
        x = enc.bn1(enc.conv_stem((images - self.mean) / self.std))
        for stage in enc.blocks[: level - 1]:
            x = stage(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.embed(images)
        return feats, self.classifier(self.head(feats))


def augment_inputs(images: torch.Tensor, rng: np.random.Generator, translate: float, jitter: float) -> torch.Tensor:
    """Random translation (reflect padding) and colour jitter, per image, before CutPaste."""
    out = []
    _, _, h, w = images.shape
    pad = int(round(translate * max(h, w)))
    for img in images:
        if pad > 0:
            padded = F.pad(img[None], (pad, pad, pad, pad), mode="reflect")[0]
            dy, dx = rng.integers(0, 2 * pad + 1, size=2)
            img = padded[:, dy : dy + h, dx : dx + w]
        if jitter > 0:
            img = color_jitter(img, rng, jitter, jitter, jitter, jitter)
        out.append(img)
    return torch.stack(out)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run a block with ``n`` intra-op threads (None: leave as is). Augmentations are many tiny
    ops: with several threads on a busy CPU each op waits for a thread barrier (measured here:
    0.36 s vs 0.24 ms per colour jitter), so they always run single-threaded."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def set_batchnorm_eval(module: nn.Module) -> None:
    """Batch-norm layers in inference mode: running statistics used, not updated."""
    for m in batchnorm_layers(module):
        m.eval()


class StepBatches:
    """The batch function of a phase's step plan: ticket (0, step) -> ``step_batch``."""

    def __init__(self, trainer: "CutPasteTrainer", data: torch.Tensor, phase_name: str):
        self.trainer, self.data, self.phase_name = trainer, data, phase_name

    def __call__(self, ticket):
        return self.trainer.step_batch(self.data, self.phase_name, ticket[1])


class StepLog:
    """Per-step loss and accuracy, kept on the device and read ``EVERY`` steps (and before a
    checkpoint): one host synchronisation per flush instead of two per step."""

    EVERY = 50

    def __init__(self, history: list, phase: str):
        self.history, self.phase = history, phase
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def add(self, step: int, loss: torch.Tensor, acc: torch.Tensor) -> None:
        self._pending.append((step, loss.detach().float(), acc.detach()))

    def flush(self) -> tuple[float, float]:
        """Move the pending values into ``history``; returns the last (loss, accuracy)."""
        if self._pending:
            values = torch.stack([torch.stack([l, a]) for _, l, a in self._pending]).tolist()
            for (step, _, _), (loss, acc) in zip(self._pending, values):
                self.history.append({"phase": self.phase, "step": step, "loss": loss, "acc": acc})
            self._pending = []
        last = self.history[-1] if self.history else {"loss": float("nan"), "acc": float("nan")}
        return last["loss"], last["acc"]


class CutPasteTrainer:
    """The training loop shared by the image-level and patch-level detectors.

    ``crop`` (None or an int) makes every training sample a random ``crop x crop`` patch of the
    (translated, jittered) image before CutPaste, as the patch-level model trains (sec. 2.4).
    ``seed`` (default: the job's) seeds the augmentation stream (an ensemble member's own seed).
    """

    def __init__(self, config: CutPasteConfig, context, crop: Optional[int] = None, seed: Optional[int] = None,
                 name: str = ""):
        self.config = config
        self.context = context
        self.crop = crop
        self.name = name  # prefix of this network's checkpoint phases (an ensemble member's own)
        self.seed = int(context.seed if seed is None else seed)
        self.sampler = CutPasteSampler(config.mode, jitter=config.patch_jitter, area_ratio=tuple(config.area_ratio),
                                       scar_width=tuple(config.scar_width), scar_length=tuple(config.scar_length),
                                       cutout_fill=config.cutout_fill)
        encoder, self.weights = load_encoder(
            config.backbone, config.pretrained, context.weights, allow_fallback=context.allow_random_weights
        )
        self.net = CutPasteNet(encoder, tuple(config.head_dims), self.sampler.num_classes).to(context.device)
        self.history: list[dict] = []
        self.seconds_per_step: Optional[float] = None

    def images_per_step(self) -> int:
        return max(1, self.config.batch_size // self.sampler.num_classes)

    def _sample(self, data: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Images of one step, input-augmented. For the patch model a random crop is taken
        first: a random crop location already is a random translation, so only the colour
        jitter is applied on top (cheaper than augmenting the full image)."""
        idx = rng.integers(0, len(data), size=self.images_per_step())
        images = data[torch.from_numpy(idx)]
        if self.crop:
            _, _, h, w = images.shape
            c = min(self.crop, h, w)
            tops = rng.integers(0, h - c + 1, size=len(images))
            lefts = rng.integers(0, w - c + 1, size=len(images))
            images = torch.stack([im[:, t : t + c, l : l + c] for im, t, l in zip(images, tops, lefts)])
            return augment_inputs(images.float() / 255.0, rng, 0.0, self.config.input_jitter)
        return augment_inputs(images.float() / 255.0, rng, self.config.translate, self.config.input_jitter)

    def step_batch(self, data: torch.Tensor, phase_name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (images, class labels) of one training step: the step's images, augmented, and
        their CutPaste variants, all drawn from a generator seeded by (seed, phase, step) alone,
        so the DataLoader workers that make it (``adbench.data`` input pipeline) never change a batch.
        Single-threaded: augmentations are many tiny ops (``torch_threads``)."""
        rng = sample_rng(self.seed, phase_name, 0, step)
        with torch_threads(1):
            return self.sampler(self._sample(data, rng), rng)

    def _phase(self, data: Optional[torch.Tensor], epochs: int, lr: float, head_only: bool, desc: str) -> None:
        """One training phase (head only, or all layers), resumable: checkpoint phase
        ``<name>head`` / ``<name>full`` (``adbench.training``). ``data`` may be None when the
        phase finished in an earlier attempt."""
        cfg = self.config
        steps = epochs * cfg.steps_per_epoch
        if steps <= 0:
            return
        net = self.net
        checkpoints = self.context.checkpoints
        phase_name = self.name + ("head" if head_only else "full")
        if checkpoints.finished(phase_name):
            phase = checkpoints.phase(phase_name, modules={"net": net})
            self.history += phase.extra_state.get("history", [])
            return
        for p in net.encoder.parameters():
            p.requires_grad_(not head_only)
        frozen_bn = cfg.freeze_bn and not head_only
        if frozen_bn:  # Keras trainable=False: neither statistics nor gamma/beta change
            for m in batchnorm_layers(net.encoder):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        device = self.context.device
        phase = checkpoints.phase(phase_name, modules={"net": net}, optimizers={"sgd": opt},
                                  schedulers={"cosine": sched})
        history = phase.extra_state.setdefault("history", [])
        log = StepLog(history, desc)
        plan = ((0, step) for step in range(phase.step, steps))
        stream = BatchStream(plan, StepBatches(self, data, phase_name), self.context.inputs)
        batches = stream.epoch(0)
        bar = tqdm(phase.steps(steps), total=steps, initial=phase.step, desc=desc, disable=not self.context.progress)
        started, first = time.perf_counter(), phase.step
        for step in bar:
            net.train()
            if head_only:
                net.encoder.eval()
            elif frozen_bn:
                set_batchnorm_eval(net.encoder)
            images, labels = to_device(next(batches), device)
            with torch_threads(cfg.num_threads):
                with self.context.autocast():  # the network under --precision, the loss in float32
                    _, logits = net(images)
                logits = full(logits)
                loss = F.cross_entropy(logits, labels)  # on logits: no softmax before the loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            log.add(step, loss, (logits.argmax(1) == labels).float().mean())
            if step % StepLog.EVERY == 0 or checkpoints.due():  # a checkpoint keeps the whole history
                loss_now, acc_now = log.flush()
                bar.set_postfix(loss=f"{loss_now:.3f}", acc=f"{acc_now:.2f}")
            phase.step_done(loss)
        log.flush()
        stream.close()
        ran = phase.step - first
        self.seconds_per_step = (time.perf_counter() - started) / ran if ran else None
        phase.finish()
        self.history += history
        for p in net.encoder.parameters():
            p.requires_grad_(True)

    def trained_before(self) -> bool:
        """Whether every training phase of this network finished in an earlier attempt."""
        cfg = self.config
        names = [self.name + "full"] if cfg.epochs > 0 else []
        if cfg.head_only_epochs > 0:
            names.append(self.name + "head")
        checkpoints = self.context.checkpoints
        return bool(names) and all(checkpoints.finished(n) for n in names)

    def train(self, data: Optional[torch.Tensor]) -> None:
        """``data``: uint8 [N, 3, H, W] training images (None: trained in an earlier attempt)."""
        cfg = self.config
        if data is not None and len(data) == 0:
            raise DataError("CutPaste: empty training set")
        self._phase(data, cfg.head_only_epochs, cfg.lr, head_only=True, desc="cutpaste head")
        lr = cfg.finetune_lr if cfg.head_only_epochs > 0 else cfg.lr
        self._phase(data, cfg.epochs, lr, head_only=False, desc="cutpaste")
        self.net.eval()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The GDE's features of float images in [0, 1] (pooled encoder output, or the pooled
        EfficientNet level of ``feature_level``), in eval mode, chunked."""
        self.net.eval()
        level = self.config.feature_level
        out = []
        bs = max(1, self.config.embed_batch_size)
        with torch_threads(self.config.num_threads):
            for i in range(0, len(images), bs):
                chunk = images[i : i + bs].to(self.context.device)
                with self.context.autocast():
                    feats = self.net.embed(chunk) if level == "pool" else self.net.level_features(chunk, int(level[5:]))
                out.append(feats.float().cpu())
        return torch.cat(out)

    def summary(self, last: int = 50) -> dict:
        tail = self.history[-last:]
        return {
            "train_steps": len(self.history),
            "final_train_loss": float(np.mean([h["loss"] for h in tail])) if tail else None,
            "final_train_accuracy": float(np.mean([h["acc"] for h in tail])) if tail else None,
            "seconds_per_step": self.seconds_per_step,
        }


class Member(NamedTuple):
    """One trained model of an ensemble: its seed, trainer (network) and GDE."""

    seed: int
    trainer: CutPasteTrainer
    gde: GaussianDensity


@register_method("cutpaste")
class CutPaste(Detector):
    """CutPaste image-level detector: 3-way CutPaste classification + GDE on pooled features.

    Paper values (appendix A.1/A.4) are the ``paper`` / ``paper_pretrained`` profiles; see the
    module docstring for where each value came from and the choices made where it is silent.
    Switches per paper table row: ``mode`` (tables 1, 4, 5), ``cutout_fill`` (table 4),
    ``feature_level`` (table 3), ``ensemble`` (table 1 "Ensemble").
    """
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 3  # 2: resumable training phases; 3: each step's augmentations seeded by (seed, phase, step)
    Config = CutPasteConfig
    PROFILES = {
        "paper": {},
        # table 1 "Ensemble": 5 CutPaste (3-way) models, scores averaged (sec. 4.1)
        "paper_ensemble": {"ensemble": 5},
        # table 3 "Finetune / Pool": EfficientNet-B4 fine-tuned by 3-way CutPaste (A.4)
        "paper_pretrained": {"backbone": "tf_efficientnet_b4.aa_in1k", "pretrained": True, "batch_size": 24,
                             "head_only_epochs": 10, "epochs": 64, "finetune_lr": 1e-4, "freeze_bn": True},
        # table 3 "Finetune / Level-7": the same model, GDE on pooled level-7 features
        "paper_level7": {"backbone": "tf_efficientnet_b4.aa_in1k", "pretrained": True, "batch_size": 24,
                         "head_only_epochs": 10, "epochs": 64, "finetune_lr": 1e-4, "freeze_bn": True,
                         "feature_level": "level7"},
        # table 3 "Pretrain": ImageNet B4 features without fine-tuning (no training step)
        "paper_imagenet": {"backbone": "tf_efficientnet_b4.aa_in1k", "pretrained": True, "epochs": 0},
        "paper_imagenet_level7": {"backbone": "tf_efficientnet_b4.aa_in1k", "pretrained": True, "epochs": 0,
                                  "feature_level": "level7"},
        # CPU budget (DESIGN.md: quick = tf_efficientnet_lite0 with its ImageNet weights): the
        # EfficientNet recipe of appendix A.4 shrunk to 128 px, batch 24 (8 images x 3), 15
        # head-only steps at lr 0.03, then 30 steps of all layers at lr 1e-3 with batch-norm
        # frozen (0.55 s per step on 2 idle cores).
        "quick": {"backbone": "tf_efficientnet_lite0.in1k", "pretrained": True, "image_size": 128,
                  "batch_size": 24, "head_only_epochs": 1, "epochs": 2, "steps_per_epoch": 15,
                  "finetune_lr": 1e-3, "freeze_bn": True},
        # the paper's from-scratch ResNet-18 at a CPU budget: 128 px, 3 x 10 images per step,
        # 150 steps. Far too few steps for a scratch network (the paper runs 65,536): it
        # barely learns the 3-way task; kept to show exactly that.
        "quick_scratch": {"image_size": 128, "batch_size": 30, "epochs": 3, "steps_per_epoch": 50},
    }
    produces_maps = False
    protocols = ("single",)
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    @classmethod
    def check_shots(cls, config, shots: int) -> None:
        """The image score is a Gaussian density (GDE) fitted to the training embeddings: its
        covariance needs at least two distinct images (one gives a zero covariance)."""
        if shots < 2:
            raise FewShotError(f"{cls.name}: {shots}-shot: "
                               "the Gaussian density estimator (GDE) needs at least 2 training images")

    def __init__(self, config: CutPasteConfig, context=None):
        super().__init__(config, context)
        self.members: list[Member] = []

    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Train ``ensemble`` models (seeds job seed + i) and fit one GDE per model on the
        features of the training images. Member 0 draws its weight init from the job's torch
        state as seeded by the harness (so ``ensemble=1`` is exactly the single-model run);
        member i >= 1 reseeds torch with job seed + i first."""
        cfg = self.config
        data = self.context.training_images(train_loader)  # uint8, decoded once per job
        self.members = []
        for i in range(cfg.ensemble):
            seed = int(self.context.seed) + i
            if i > 0:
                torch.manual_seed(seed)
            trainer = CutPasteTrainer(cfg, self.context, seed=seed, name=f"m{i}/" if cfg.ensemble > 1 else "")
            trainer.train(data)  # resumable: a finished network is restored, not trained again
            feats = torch.cat([trainer.embed(data[j : j + 64].float() / 255.0) for j in range(0, len(data), 64)])
            gde = GaussianDensity(l2_normalize=cfg.gde_l2_normalize).fit(feats)
            self.members.append(Member(seed, trainer, gde))
        self.context.checkpoints.training_done()
        self.trainer, self.gde = self.members[0].trainer, self.members[0].gde

    @torch.no_grad()
    def member_scores(self, images: torch.Tensor) -> torch.Tensor:
        """[members, B] Mahalanobis distances of every member."""
        return torch.stack([m.gde.score(m.trainer.embed(images)) for m in self.members])

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        return Prediction(scores=self.member_scores(batch.images).mean(dim=0), maps=None)

    def weights_info(self) -> WeightsInfo:
        return self.trainer.weights if hasattr(self, "trainer") else NO_WEIGHTS

    def num_parameters(self) -> int:
        return sum(p.numel() for m in self.members for p in m.trainer.net.parameters())

    def record_extras(self) -> dict:
        cfg = self.config
        extras = {"maps": "none (image-level CutPaste has no localisation; see cutpaste_patch)",
                  "mode": cfg.mode, "batch_size": cfg.batch_size,
                  "images_per_step": max(1, cfg.batch_size // CutPasteSampler.MODES[cfg.mode]),
                  "feature_level": cfg.feature_level, "gde_l2_normalize": cfg.gde_l2_normalize}
        if self.members:
            extras.update(self.trainer.summary())
            extras["gde_shrinkage"] = float(self.gde.shrinkage[0])
            extras["feature_dim"] = int(self.gde.mean.shape[-1])
            if cfg.ensemble > 1:
                extras["ensemble_scores"] = "mean of the members' raw Mahalanobis distances"
                extras["ensemble"] = [{"seed": m.seed, **m.trainer.summary(), "gde_shrinkage": float(m.gde.shrinkage[0])}
                                      for m in self.members]
        return extras
