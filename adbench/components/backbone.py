"""A timm feature extractor shared by every method that looks at pretrained features.

Why one component: PatchCore, ToCoAD, Reverse Distillation, FastFlow, UniAD and CutPaste all
need "feature maps of layers X of model Y with weights Z", and they must agree on three things
that are easy to get subtly wrong: which weights were loaded (the record's weights tag),
how inputs are normalised (the model's own timm ``pretrained_cfg``, not a hard-coded ImageNet
mean) and what "layer 2" means across architectures.

Layers. ``layers`` takes timm ``features_only`` indices (ints) or module names. Index ``i`` has
stride ``2**(i+1)`` for ResNets and EfficientNets alike (0: stem, stride 2; 1: stride 4; 2:
stride 8 = ResNet ``layer2``; 3: stride 16 = ``layer3``; 4: stride 32), so a method's default of
``(2, 3)`` means the same thing for wide_resnet50_2 and tf_efficientnet_lite0. Names such as
``layer2`` or ``blocks.3`` are matched against timm's ``feature_info`` module names.

Weights: ``model_name`` is an exact timm tag (``wide_resnet50_2.tv_in1k``); ``adbench.weights``
resolves and verifies it (``--weights PATH``, ``$ADBENCH_WEIGHTS_DIR/<tag>.pth`` or a file known by
its sha256, timm's download of that tag, random only when asked or as a quick profile's warned
fallback) and ``self.weights`` (a ``WeightsInfo``) says what was loaded. The normalisation comes
from the tag's own ``pretrained_cfg``: two tags of one architecture may normalise differently.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from adbench.errors import ConfigError
from adbench.weights import WeightsInfo, exact_tag, load_pretrained


def _timm():
    import timm  # imported lazily: timm imports torchvision, which takes seconds

    return timm


class Backbone(nn.Module):
    """Multi-layer feature maps of a timm model, normalised with its own pretrained config.

    ``forward(x)`` takes images in [0, 1] ([B, 3, H, W]) and returns one map per layer.
    ``channels`` and ``strides`` describe those maps. ``frozen=True`` fixes the weights and
    keeps batch-norm in eval mode even when the parent module is put in training mode.
    """

    def __init__(
        self,
        model_name: str,
        layers: Sequence[int | str] = (2, 3),
        *,
        weights: Optional[str] = None,
        frozen: bool = True,
        allow_random_fallback: bool = False,
        pretrained: bool = True,
    ):
        super().__init__()
        timm = _timm()
        self.model_name = exact_tag(model_name)
        probe = timm.create_model(self.model_name, pretrained=False, features_only=True)
        indices = self._resolve_layers(probe, layers)
        del probe
        self.model = timm.create_model(self.model_name, pretrained=False, features_only=True, out_indices=indices)
        self.layer_indices = tuple(indices)
        self.channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())
        self.layer_names = list(self.model.feature_info.module_name())
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.weights: WeightsInfo = load_pretrained(
                self.model, self.model_name, weights, allow_random_fallback=allow_random_fallback,
                full_model_factory=lambda: timm.create_model(self.model_name, pretrained=True),
            )
        else:
            self.weights = WeightsInfo("random", "from scratch")
        self.frozen = frozen
        if frozen:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    @property
    def weights_tag(self) -> str:
        """The exact timm tag whose weights were loaded, or ``random``."""
        return self.weights.tag

    # --- layers --------------------------------------------------------------------------------
    @staticmethod
    def _resolve_layers(probe: nn.Module, layers: Sequence[int | str]) -> list[int]:
        names = list(probe.feature_info.module_name())
        count = len(names)
        out = []
        for layer in layers:
            if isinstance(layer, str) and layer.strip().lstrip("-").isdigit():
                layer = int(layer)
            if isinstance(layer, int):
                if not -count <= layer < count:
                    raise ConfigError(f"--set layers: index {layer} out of range 0..{count - 1}; layers: {', '.join(names)}")
                out.append(layer % count)
            elif layer in names:
                out.append(names.index(layer))
            else:
                raise ConfigError(f"--set layers: unknown layer {layer!r}; this backbone has {', '.join(names)} (or indices 0..{count - 1})")
        if not out:
            raise ConfigError("--set layers: at least one layer is needed")
        return sorted(set(out))

    # --- forward -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.normalize(images)
        if self.frozen:
            with torch.no_grad():
                return list(self.model(x))
        return list(self.model(x))
