"""Reverse Distillation (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022).

Method, as in the paper's Section 3 and the official code (github.com/hq-deng/RD4AD, commit
65540768):

1. Teacher E: a frozen ImageNet CNN; its feature maps of layers 1-3 (strides 4, 8, 16 for
   wide_resnet50_2) are the distillation targets.
2. One-class bottleneck embedding (OCBE): multi-scale feature fusion (MFF) brings the shallower
   teacher maps to the deepest map's resolution with stride-2 3x3 conv + BN + ReLU steps, the
   three maps are concatenated, and a one-class embedding block (OCE: residual bottleneck blocks,
   the first with stride 2) compresses them into a compact code. Official code: 3 blocks, code of
   2048 channels at stride 32 for WRN50 (= 2x the deepest teacher map's channels).
3. Student decoder D: mirrors the teacher in reverse. Each stage upsamples by the teacher's
   stride ratio with a 2x2 transposed conv (the official "de_resnet" blocks replace the 3x3 conv
   of a bottleneck block by a stride-2 deconv) and outputs the channels of the matching teacher
   layer. Official WRN50 decoder: 3, 4, 6 blocks for the 1024-, 512-, 256-channel stages.
   Here the decoder and OCBE are built from the teacher's ``.channels`` and ``.strides``, so any
   timm backbone can be the teacher (tf_efficientnet_lite0 in the ``quick`` profile).
4. Loss (``loss=flattened``, the official ``main.py`` ``loss_function``): per layer, 1 - cosine
   similarity between the *flattened* teacher and student maps of each sample, averaged over
   the batch, summed over layers. ``loss=per_pixel`` is the paper's Eq. 2 and anomalib's
   (``anomalib/models/reverse_distillation/loss.py``, v0.3.2-v0.3.7): 1 - cosine along the
   channels at each position, averaged over positions and batch, summed over layers.
5. Anomaly map (official ``test.py`` ``cal_anomaly_map(amap_mode='a')``, paper Eq. 3): per
   layer 1 - cos along channels at each position, bilinearly upsampled (align_corners=True) to
   the input size and summed over layers (``map_mode=add``); ``map_mode=multiply`` takes the
   product instead (anomalib's default, ``anomaly_map.py``: ones, then ``*=`` per layer).
   Gaussian blur sigma 4 (kernel 33, reflect border; scipy ``gaussian_filter(sigma=4)`` in the
   official code, kornia ``gaussian_blur2d((33, 33), (4, 4))`` in anomalib). Image score:
   maximum of the map (both).

Initialisation (official ``resnet.py`` ``BN_layer.__init__`` and ``de_resnet.py``
``ResNet.__init__``): every module that ``isinstance(m, nn.Conv2d)`` gets
``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (std sqrt(2 / fan_out), fan_out =
out_channels x kernel area), batch-norm weight 1 and bias 0. ``nn.ConvTranspose2d`` is not a
subclass of ``nn.Conv2d``, so the official loops leave the decoder's 2x2 deconvolutions (the
upsampling conv of each first decoder block and its shortcut) at PyTorch's default
(kaiming_uniform, a = sqrt(5)). This implementation does exactly what the official code
effectively does: Kaiming-normal for every ``Conv2d`` of the bottleneck (fusion convs included)
and the decoder, PyTorch's default for every ``ConvTranspose2d``. anomalib 0.3.x
(``components/bottleneck.py``, ``components/de_resnet.py``) has the same loops.

``paper`` profile: the official code (RD4AD ``main.py`` ``train()``: ``epochs = 200``,
``learning_rate = 0.005``, ``batch_size = 16``, ``image_size = 256``, Adam betas (0.5, 0.999),
no augmentation), its architecture, loss and map, torchvision's weights
(``wide_resnet50_2.tv_in1k``: the official ``model_urls``). The same values as MIAD appendix
A.2.1 except the batch: the appendix ran 32, the official code 16. ``paper`` takes the
official 16 (issue 24: the recipe of the method's own paper; until then it took MIAD's 32,
which ``miad`` keeps). The teacher stays in eval mode; OCBE and decoder train with batch-norm in
training mode (official ``bn.train(); decoder.train()``). The last epoch's model is scored
(the official loop evaluates on the test set every 10 epochs and saves the latest weights, so it
selects nothing either).

``miad`` profile: what the MIAD benchmark actually ran (appendix A.2.1: "the publicly
available code in Anomalib", the values above, "the other parameters not mentioned are
consistent with the default configuration in Anomalib"), with anomalib v0.3.7 (commit
2f0a87cf, the last 0.3.x; ``anomalib/models/reverse_distillation/config.yaml``,
``torch_model.py``, ``loss.py``, ``anomaly_map.py``, ``components/bottleneck.py``):

* teacher ``wide_resnet50_2.racm_in1k``: v0.3.6-v0.3.7 build it with
  ``timm.create_model("wide_resnet50_2", pretrained=True, features_only=True, ...)`` under
  their pinned ``timm==0.5.4``, whose bare name downloads ``wide_resnet50_racm-8234f177.pth``
  (timm v0.5.4 ``timm/models/resnet.py`` l.88-90), timm >= 0.9's ``racm_in1k``. v0.3.2-v0.3.5
  load torchvision's V1 weights instead: ``--set backbone=wide_resnet50_2.tv_in1k``;
* layers 1-3, 256 px, batch 32 (appendix: "run with a batch size of 32"; also anomalib's
  ``train_batch_size: 32``; set in the profile since ``paper`` is 16), 200 epochs
  (``max_epochs: 200``), Adam lr 0.005, beta1 0.5 and the appendix's beta2 0.999 (anomalib's
  config says 0.99; the appendix states 0.999);
* ``loss=per_pixel``, ``map_mode=multiply`` (anomalib's ``anomaly_map_mode: multiply``),
  Gaussian sigma 4;
* OCE blocks of inner width a quarter of their output (``oce_inner_ratio=0.25``): anomalib's
  ``OCBE`` builds torchvision ``Bottleneck`` blocks with the default ``width_per_group=64``
  (512 inside a 2048-channel block), where the official ``BN_layer`` gets
  ``width_per_group=128`` (1024 inside, ratio 0.5). Both decoders use 128 (ratio 0.5).
* Not reproduced: MIAD's published RD numbers were selected on the test set. anomalib 0.3.7
  validates every 2 epochs (``check_val_every_n_epoch: 2``) and has no validation split here
  (``create_validation_set: false``: the datamodule's ``val_dataloader`` returns the test
  set), so the ``ModelCheckpoint`` monitoring ``pixel_AUROC`` (mode max,
  ``utils/callbacks/__init__.py``) and the ``EarlyStopping`` on it (patience 3, RD's
  ``lightning_model.py``) both read test-set scores; after ``trainer.fit`` stops,
  ``tools/train.py`` reloads ``trainer.checkpoint_callback.best_model_path`` ("Loading the best
  model weights") and only then runs ``trainer.test``. So each published number is the best
  test pixel AUROC over the validated epochs, not a held-out score. The ``miad`` profile keeps
  the last epoch of the full 200: no method here early-stops or picks checkpoints on test
  data, so expect our numbers at or below MIAD's for that reason alone.

Widths of the residual blocks: a wide bottleneck block's inner width is half its output
(wide_resnet50_2: 1024 inside a 2048-channel block), used for every teacher here; the OCE's
ratio is ``oce_inner_ratio``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from adbench.components.blur import gaussian_blur
from adbench.components.bottleneck import Bottleneck
from adbench.components.feature_cache import train_on_features
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class ReverseDistillationConfig(MethodConfig):
    batch_size: int = 16  # official main.py (MIAD appendix A.2.1: 32, the miad profile)
    backbone: str = "wide_resnet50_2.tv_in1k"
    layers: tuple[int, ...] = (1, 2, 3)
    epochs: int = 200
    lr: float = 0.005
    beta1: float = 0.5
    beta2: float = 0.999
    # residual blocks of the one-class embedding (official: 3) and per decoder stage, listed
    # deepest stage first (official de_wide_resnet50_2: 3, 4, 6)
    oce_blocks: int = 3
    decoder_blocks: tuple[int, ...] = (3, 4, 6)
    # inner (1x1 -> 3x3) width of the OCE's residual blocks relative to their output:
    # official 0.5 (width_per_group 128), anomalib 0.25 (width_per_group 64)
    oce_inner_ratio: float = 0.5
    loss: Literal["flattened", "per_pixel"] = "flattened"  # official main.py / paper Eq. 2, anomalib
    map_mode: Literal["add", "multiply"] = "add"  # official test.py / anomalib
    blur_sigma: float = 4.0
    # compute the frozen teacher's training features once (adbench.components.feature_cache);
    # same training (no augmentation), far less CPU; off in the paper profile to bound RAM
    cache_features: bool = False

    def __post_init__(self) -> None:
        # every field is read in every configuration: no inert options (issue 13) to reject
        if not 0 < self.oce_inner_ratio <= 1:
            raise ConfigError(f"--set oce_inner_ratio={self.oce_inner_ratio}: must be in (0, 1]")


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _residual_block(cin: int, cout: int, *, down: int = 1, up: int = 1, inner_ratio: float = 0.5) -> Bottleneck:
    """The official code's bottleneck (``adbench.components.bottleneck``) with its inner width
    ``inner_ratio * cout`` (torchvision's ``width_per_group=64`` gives 0.5; at least 8)."""
    return Bottleneck(cin, max(int(cout * inner_ratio), 8), cout, down=down, up=up)


def _log2_ratio(big: int, small: int) -> int:
    ratio = big // small
    if ratio < 2 or ratio * small != big or ratio & (ratio - 1):
        raise ConfigError(
            f"--set layers: reverse distillation needs teacher layers whose strides double (or grow by a "
            f"power of two) from one to the next; got strides {small} -> {big}"
        )
    return int(math.log2(ratio))


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale feature fusion to the deepest teacher resolution, then residual blocks
    (the first with stride 2) producing the one-class embedding (2x the deepest channels)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], blocks: int, inner_ratio: float = 0.5):
        super().__init__()
        deepest = len(channels) - 1
        self.fuse = nn.ModuleList()
        for i in range(deepest):
            steps: list[nn.Module] = []
            cin = channels[i]
            for j in range(i, deepest):
                # walk the teacher's own channel ladder: c_i -> c_{i+1} -> ... -> c_last
                for _ in range(_log2_ratio(strides[j + 1], strides[j])):
                    steps.append(_conv_bn_relu(cin, channels[j + 1], 2))
                    cin = channels[j + 1]
            self.fuse.append(nn.Sequential(*steps))
        fused = channels[deepest] * len(channels)
        embed = 2 * channels[deepest]
        layers = [_residual_block(fused, embed, down=2, inner_ratio=inner_ratio)]
        layers += [_residual_block(embed, embed, inner_ratio=inner_ratio) for _ in range(max(blocks, 1) - 1)]
        self.oce = nn.Sequential(*layers)
        self.out_channels = embed

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = [f(x) for f, x in zip(self.fuse, feats[:-1])] + [feats[-1]]
        return self.oce(torch.cat(fused, dim=1))


class StudentDecoder(nn.Module):
    """Reverse of the teacher: from the embedding (stride 2x deepest) back up to each teacher
    layer's resolution and channels; returns maps ordered like the teacher's (shallow first)."""

    def __init__(self, embed_channels: int, channels: Sequence[int], strides: Sequence[int], blocks: Sequence[int]):
        super().__init__()
        if len(blocks) != len(channels):
            raise ConfigError(
                f"--set decoder_blocks: needs one count per teacher layer ({len(channels)}), got {len(blocks)}"
            )
        targets = list(reversed(range(len(channels))))  # deepest first
        prev_c, prev_s = embed_channels, strides[-1] * 2
        self.stages = nn.ModuleList()
        for n, t in zip(blocks, targets):
            up = prev_s // strides[t]
            _log2_ratio(prev_s, strides[t])
            stage = [_residual_block(prev_c, channels[t], up=up)]
            stage += [_residual_block(channels[t], channels[t]) for _ in range(max(n, 1) - 1)]
            self.stages.append(nn.Sequential(*stage))
            prev_c, prev_s = channels[t], strides[t]

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            z = stage(z)
            outs.append(z)
        return outs[::-1]


def distillation_loss(
    teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], mode: str = "flattened"
) -> torch.Tensor:
    """Sum over layers of the mean cosine distance between teacher and student maps.

    ``flattened`` (official code): mean_b (1 - cos(flatten(t_b), flatten(s_b))), one cosine per
    sample over all channels and positions. ``per_pixel`` (paper Eq. 2, anomalib): mean over
    b, h, w of (1 - cos along channels at (h, w))."""
    if mode not in ("flattened", "per_pixel"):
        raise ValueError(f"loss mode must be 'flattened' or 'per_pixel', got {mode!r}")
    loss = teacher[0].new_zeros(())
    for t, s in zip(teacher, student):
        if mode == "flattened":
            cos = F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)
        else:
            cos = F.cosine_similarity(t, s, dim=1)
        loss = loss + (1.0 - cos).mean()
    return loss


def anomaly_map(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int],
                mode: str = "add") -> torch.Tensor:
    """Per-position (1 - cos along channels) of each layer, upsampled to ``size`` (bilinear,
    align_corners=True), summed (``add``, official) or multiplied (``multiply``, anomalib)
    over layers: [B, H, W]."""
    if mode not in ("add", "multiply"):
        raise ValueError(f"map mode must be 'add' or 'multiply', got {mode!r}")
    total = None
    for t, s in zip(teacher, student):
        m = 1.0 - F.cosine_similarity(t, s, dim=1)
        m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1)
        if total is None:
            total = m
        else:
            total = total * m if mode == "multiply" else total + m
    return total


def official_init(module: nn.Module) -> None:
    """RD4AD's initialisation loop (``resnet.py`` BN_layer, ``de_resnet.py`` ResNet): every
    ``nn.Conv2d`` Kaiming-normal (fan_out, relu), batch/group-norm weight 1 and bias 0.
    ``nn.ConvTranspose2d`` is not an ``nn.Conv2d``: it keeps PyTorch's default, as there."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


# ------------------------------------------------------------------------------------------
# Detector
# ------------------------------------------------------------------------------------------
@register_method("reverse_distillation")
class ReverseDistillation(Detector):
    """Teacher-student reverse distillation with a one-class bottleneck (see module docstring)."""
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 2  # 2: resumable training, data order by (seed, epoch)
    Config = ReverseDistillationConfig
    PROFILES = {
        "paper": {},
        # lite0 teacher, one block per OCE/decoder stage, 20 epochs, teacher features cached.
        # Measured on the shared 2-core CPU (load 17-28, one torch thread): MVTec bottle job
        # 7.6 min (fit 407 s), magnetic_tile 17.5 min (fit 875 s, test 153 s). Batch 32, as
        # those runs (and the records in results/) had before paper moved to the official 16:
        # 20 epochs of batch 32 is the CPU budget that was measured.
        "quick": {
            "backbone": "tf_efficientnet_lite0.in1k",
            "batch_size": 32,
            "epochs": 20,
            "oce_blocks": 1,
            "decoder_blocks": (1, 1, 1),
            "cache_features": True,
        },
        # MIAD appendix A.2.1 + anomalib v0.3.7 defaults (module docstring)
        "miad": {
            "batch_size": 32,
            "backbone": "wide_resnet50_2.racm_in1k",
            "oce_inner_ratio": 0.25,
            "loss": "per_pixel",
            "map_mode": "multiply",
        },
    }
    produces_maps = True
    protocols = ("single",)
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    def __init__(self, config: ReverseDistillationConfig, context=None):
        super().__init__(config, context)
        cfg = self.config
        self.teacher = self.pretrained_backbone(cfg.backbone, cfg.layers)
        self.bottleneck = OneClassBottleneck(
            self.teacher.channels, self.teacher.strides, cfg.oce_blocks, inner_ratio=cfg.oce_inner_ratio
        )
        self.student = StudentDecoder(
            self.bottleneck.out_channels, self.teacher.channels, self.teacher.strides, cfg.decoder_blocks
        )
        official_init(self.bottleneck)
        official_init(self.student)
        self.bottleneck.to(self.device)
        self.student.to(self.device)
        self.loss_history: list[float] = []

    def _teacher(self, images: torch.Tensor) -> list[torch.Tensor]:
        with self.context.autocast():
            return full(self.teacher(images))

    def _student(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Bottleneck and student under ``--precision``; the cosine loss and maps in float32."""
        with self.context.autocast():
            return full(self.student(self.bottleneck(feats)))

    def fit(self, train_loader: Iterable[Batch]) -> None:
        """OCBE and student learn to reproduce the teacher's maps (step 4's loss). The teacher stays
        frozen in eval mode, the others train with batch-norm in training mode (official
        ``bn.train(); decoder.train()``), which is what lets ``quick`` cache the teacher's maps."""
        cfg = self.config
        self.loss_history = train_on_features(
            self.teacher, self._teacher, train_loader,
            trainable={"bottleneck": self.bottleneck, "student": self.student},
            loss_fn=lambda feats: distillation_loss(feats, self._student(feats), cfg.loss),
            make_optimizer=lambda params: torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)),
            context=self.context, config=cfg, desc="reverse_distillation", loss_format=".4f",
        )

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        images = batch.images.to(self.device)
        feats = self._teacher(images)
        maps = anomaly_map(feats, self._student(feats), tuple(images.shape[-2:]), self.config.map_mode)
        maps = gaussian_blur(maps, self.config.blur_sigma)
        return Prediction(scores=maps.flatten(1).max(dim=1).values, maps=maps)

    def weights_info(self):
        return self.teacher.weights

    def record_extras(self) -> dict:
        trainable = sum(p.numel() for m in (self.bottleneck, self.student) for p in m.parameters())
        extras = {
            "teacher_channels": list(self.teacher.channels),
            "teacher_strides": list(self.teacher.strides),
            "trainable_parameters": trainable,
        }
        if self.loss_history:
            extras.update(loss_first_epoch=self.loss_history[0], loss_last_epoch=self.loss_history[-1])
        return extras
