"""FastFlow (Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D
Normalizing Flows", 2021).

Method, as in the paper's Section 3 and MIAD appendix A.2.3:

1. Feature extractor: a frozen ImageNet CNN; for ResNet-type backbones the last layer of each
   of the first three blocks (strides 4, 8, 16; ``layers=(1, 2, 3)`` of the shared Backbone),
   each followed by a layer norm over (C, H, W). The norm is trainable, as in the reference
   re-implementation and Anomalib (``nn.LayerNorm([C, H, W], elementwise_affine=True)``).
2. One 2D normalising flow per scale, keeping the map's shape (C, H, W): 8 flow steps, each an
   affine coupling block whose scale/shift subnet is conv-ReLU-conv with the same hidden width
   as its input (hidden ratio 1.0); kernels alternate 3x3 (even steps) and 1x1 (odd steps),
   the paper's trick to be fast while keeping local and global context. ``conv3x3_only`` keeps
   3x3 everywhere (Anomalib's setting for ResNet-18). The coupling is FrEIA's
   ``AllInOneBlock``, which the paper's reference code also uses: affine coupling with soft
   clamping ``s = 2 * tanh(.)`` (``affine_clamping=2.0``), a global affine (ActNorm-like)
   scaling and a fixed random channel permutation after each step.
3. Training: maximum likelihood of z under N(0, I): per scale, loss = mean over the batch of
   0.5 * sum(z^2) - log|det J|, summed over scales. Adam lr 1e-3, weight decay 1e-5, batch 32,
   500 epochs, 256x256, no augmentation (MIAD appendix A.2.3; no early stopping, no test-set
   model selection: the model after the last epoch is the one evaluated).
4. Scoring: per scale, probability map p = exp(-0.5 * mean over channels of z^2), bilinearly
   upsampled to the input size; anomaly map = -mean over scales of p ("we average the outputs
   of each heatmap", MIAD A.2.3); image score = max of the map (Anomalib's and the reference
   re-implementation's rule).

Pretrained weights (exact timm tags; facts from the reference code and timm's history):

* ``wide_resnet50_2.racm_in1k`` (``paper``, ``miad``). The MIAD appendix says only
  "Wide-ResNet50-2 ... initialized from Imagenet pre-trained weights". The reference
  re-implementation the paper's numbers are reproduced with (github.com/gathierry/FastFlow,
  commit 2cf1f2f, ``fastflow.py``) calls ``timm.create_model("wide_resnet50_2",
  pretrained=True, features_only=True, out_indices=[1, 2, 3])`` and its ``requirements.txt``
  pins ``timm==0.5.4``. In timm 0.5.4 (``timm/models/resnet.py``) the bare name resolves to
  ``wide_resnet50_racm-8234f177.pth``, timm's own RandAugment/cosine training (81.5 % top-1),
  which timm >= 0.9 calls ``wide_resnet50_2.racm_in1k``; it is *not* torchvision's
  ``tv_in1k`` (78.5 %). Anomalib's FastFlow (added in v0.3.2, same ``timm==0.5.4`` pin,
  ``anomalib/models/fastflow/torch_model.py``) loads the same file.
* ``resnet18.tv_in1k`` (``--profile resnet18``, the paper's lighter option): in timm 0.5.4 the
  bare ``resnet18`` was torchvision's ``resnet18-5c106cde.pth`` (timm 1.0.12+ serves the same
  weights re-serialised as ``resnet18-f37072fd.pth`` under this tag; today's bare
  ``resnet18`` is the different ``a1_in1k``). The profile also sets ``conv3x3_only=true``, the
  reference implementation's ``configs/resnet18.yaml`` (8 flow steps, hidden ratio 1.0,
  3x3-only subnets, 256 px) and Anomalib's default FastFlow config.

Profiles. ``paper`` = the MIAD appendix A.2.3 recipe above (which is the FastFlow paper's
setting). ``miad`` is defined explicitly and is identical to ``paper``: the appendix gives
every value FastFlow needs (WRN50 with the reference implementation's weights, 256 px, first
three blocks, 8 flow steps, Adam 1e-3, weight decay 1e-5, 500 epochs, batch 32, maps of each
scale averaged, no augmentation), and where it is silent (hidden ratio 1.0, clamping 2.0,
alternating 3x3 / 1x1 subnets, trainable layer norm, map rule) ``paper`` already follows the
reference implementation. ``resnet18``: see above. ``quick``: CPU demo (see ``PROFILES``).

No silent options (``adbench.config.reject_inert``): ``conv3x3_only`` has no effect with fewer than 2
flow steps (step 0 is 3x3 anyway), so a non-default value there is a ConfigError;
``hidden_ratio`` must be positive.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from adbench.components.feature_cache import train_on_features
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class FastFlowConfig(MethodConfig):
    backbone: str = "wide_resnet50_2.racm_in1k"  # what the reference implementation loaded (docstring)
    layers: tuple[int, ...] = (1, 2, 3)
    flow_steps: int = 8
    hidden_ratio: float = 1.0
    clamp: float = 2.0
    conv3x3_only: bool = False
    epochs: int = 500
    lr: float = 1e-3
    weight_decay: float = 1e-5
    # compute the frozen backbone's training features once (adbench.components.feature_cache);
    # same training (no augmentation), far less CPU; off in the paper profile to bound RAM
    cache_features: bool = False

    def __post_init__(self):
        if self.hidden_ratio <= 0:
            raise ConfigError(f"--set hidden_ratio={self.hidden_ratio}: must be positive")

    def inert_options(self) -> dict[str, str]:
        """Options this configuration does not read, with the reason (no silent options;
        ``resolve_config`` rejects one the user set: ``adbench.config.reject_inert``)."""
        inert: dict[str, str] = {}
        if self.flow_steps < 2:
            inert["conv3x3_only"] = f"flow_steps={self.flow_steps} has no 1x1 step to replace"
        return inert



class _Subnet(nn.Module):
    """Coupling subnet: conv(k) -> ReLU -> conv(k), 'same' padding (predicts scale and shift).

    Under ``--precision bf16`` only these convolutions run in bf16 (``autocast``, set by the
    detector): their output returns as float32, so the coupling's affine transform, the fixed
    permutations and every log-determinant stay in float32."""

    def __init__(self, cin: int, cout: int, kernel: int, hidden_ratio: float):
        super().__init__()
        hidden = max(int(cin * hidden_ratio), 1)
        self.net = nn.Sequential(
            nn.Conv2d(cin, hidden, kernel, padding=kernel // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, cout, kernel, padding=kernel // 2),
        )
        self.autocast = contextlib.nullcontext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            out = self.net(x)
        return full(out)


def build_flow(
    shape: Sequence[int], steps: int, *, hidden_ratio: float = 1.0, clamp: float = 2.0, conv3x3_only: bool = False
):
    """A FrEIA ``SequenceINN`` over [C, H, W]: ``steps`` AllInOneBlocks with alternating 3x3/1x1
    subnets. ``flow(x)`` returns ``(z, log_jac_det [B])``; ``flow(z, rev=True)`` inverts."""
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    flow = Ff.SequenceINN(*shape)
    for i in range(steps):
        kernel = 1 if (i % 2 == 1 and not conv3x3_only) else 3

        def subnet(cin: int, cout: int, kernel: int = kernel) -> nn.Module:
            return _Subnet(cin, cout, kernel, hidden_ratio)

        flow.append(Fm.AllInOneBlock, subnet_constructor=subnet, affine_clamping=clamp, permute_soft=False)
    return flow


def flow_nll(zs: Sequence[torch.Tensor], log_jacs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Negative log-likelihood (up to constants) summed over scales, averaged over the batch."""
    loss = zs[0].new_zeros(())
    for z, log_jac in zip(zs, log_jacs):
        loss = loss + torch.mean(0.5 * torch.sum(z**2, dim=(1, 2, 3)) - log_jac)
    return loss


def anomaly_map(zs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """-mean over scales of upsampled exp(-0.5 * mean_c z^2): [B, H, W]."""
    maps = []
    for z in zs:
        prob = torch.exp(-0.5 * torch.mean(z**2, dim=1, keepdim=True))
        maps.append(F.interpolate(-prob, size=size, mode="bilinear", align_corners=False))
    return torch.stack(maps, dim=0).mean(dim=0).squeeze(1)


@register_method("fastflow")
class FastFlow(Detector):
    """Per-scale 2D normalising flows on frozen CNN features (see module docstring)."""
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 2  # 2: resumable training, data order by (seed, epoch)
    Config = FastFlowConfig
    PROFILES = {
        "paper": {},
        # MIAD appendix A.2.3 = the paper profile (module docstring: nothing differs)
        "miad": {},
        # the paper's lighter option, as the reference implementation's configs/resnet18.yaml
        "resnet18": {"backbone": "resnet18.tv_in1k", "conv3x3_only": True},
        # lite0 features (cached), 8 flow steps as in the paper, 10 epochs. Measured on the
        # shared 2-core CPU (one torch thread, load 17-34): MVTec bottle job 7.1 min (fit
        # 364 s); magnetic_tile ~33 min under load ~30 (over its 20-min budget there: the CPU
        # was shared by ~15 busy processes).
        "quick": {"backbone": "tf_efficientnet_lite0.in1k", "epochs": 10, "cache_features": True},
    }
    produces_maps = True
    protocols = ("single",)
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    def __init__(self, config: FastFlowConfig, context=None):
        super().__init__(config, context)
        cfg = self.config
        self.backbone = self.pretrained_backbone(cfg.backbone, cfg.layers)
        size = self.preprocess().output_size
        with torch.no_grad():
            shapes = [tuple(f.shape[1:]) for f in self.backbone(torch.zeros(1, 3, size, size, device=self.device))]
        self.norms = nn.ModuleList([nn.LayerNorm(list(s), elementwise_affine=True) for s in shapes]).to(self.device)
        self.flows = nn.ModuleList(
            [
                build_flow(s, cfg.flow_steps, hidden_ratio=cfg.hidden_ratio, clamp=cfg.clamp, conv3x3_only=cfg.conv3x3_only)
                for s in shapes
            ]
        ).to(self.device)
        for module in self.flows.modules():  # the subnets' convolutions run under --precision
            if isinstance(module, _Subnet):
                module.autocast = self.context.autocast
        self.loss_history: list[float] = []

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        with self.context.autocast():
            return full(self.backbone(images))

    def _flow(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        zs, jacs = [], []
        for f, norm, flow in zip(feats, self.norms, self.flows):
            z, log_jac = flow(norm(f))
            zs.append(z)
            jacs.append(log_jac)
        return zs, jacs

    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Maximum likelihood of z under N(0, I) (step 3). Only the layer norms and the flows
        learn: the extractor stays frozen, which is what lets ``quick`` cache its features."""
        cfg = self.config
        self.loss_history = train_on_features(
            self.backbone, self._features, train_loader,
            trainable={"norms": self.norms, "flows": self.flows},
            loss_fn=lambda feats: flow_nll(*self._flow(feats)),
            make_optimizer=lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
            context=self.context, config=cfg, desc="fastflow", loss_format=".1f",
        )

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        images = batch.images.to(self.device)
        zs, _ = self._flow(self._features(images))
        maps = anomaly_map(zs, tuple(images.shape[-2:]))
        return Prediction(scores=maps.flatten(1).max(dim=1).values, maps=maps)

    def weights_info(self):
        return self.backbone.weights

    def record_extras(self) -> dict:
        trainable = sum(p.numel() for m in (self.norms, self.flows) for p in m.parameters() if p.requires_grad)
        extras = {"feature_channels": list(self.backbone.channels), "trainable_parameters": trainable}
        if self.loss_history:
            extras.update(loss_first_epoch=self.loss_history[0], loss_last_epoch=self.loss_history[-1])
        return extras
