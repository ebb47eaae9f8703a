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

Weights, first match wins:
1. ``weights=PATH``: that file;
2. ``$ADBENCH_WEIGHTS_DIR/<timm name>.pth``;
3. timm's own download (needs the internet; skipped within seconds when huggingface.co does
   not answer or ``HF_HUB_OFFLINE=1``, instead of huggingface_hub's ~80 s of retries);
4. ``weights="random"``: random init, only when asked, or as a *warned* fallback when the
   caller allows it (``quick`` profiles). ``paper`` profiles never fall back silently.
Files load with ``torch.load(weights_only=True)``; missing keys are an error (unexpected keys,
such as the classifier head of a full-model checkpoint, are fine).
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from adbench.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "ADBENCH_WEIGHTS_DIR"


def _timm():
    import timm  # imported lazily: timm imports torchvision, which takes seconds

    return timm


def weights_file_for(model_name: str) -> Optional[Path]:
    """``$ADBENCH_WEIGHTS_DIR/<model_name>.pth`` if it exists."""
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return None
    path = Path(folder).expanduser() / f"{model_name}.pth"
    return path if path.is_file() else None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely; unwrap the common ``{"state_dict": ...}`` containers."""
    if not path.is_file():
        raise WeightsError(f"--weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: cannot read weights file ({text[:160]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_into(model: nn.Module, path: Path, model_name: str) -> None:
    """Load ``path`` into ``model``; missing keys or shape mismatches are a WeightsError."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    wrong_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise WeightsError(
            f"{path}: weights are for another architecture than {model_name} "
            f"({k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"{path}: weights do not fit {model_name}: {len(missing)} missing keys "
            f"(first: {missing[0]})"
        )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check that timm's download source answers, so offline runs fail in seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    import socket

    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


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
        self.model_name = model_name
        if not timm.is_model(model_name):
            close = timm.list_models(f"*{model_name.split('_')[0]}*")[:5]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ConfigError(f"--set backbone={model_name}: unknown timm model{hint}")
        probe = timm.create_model(model_name, pretrained=False, features_only=True)
        indices = self._resolve_layers(probe, layers)
        del probe
        self.model = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=indices)
        self.layer_indices = tuple(indices)
        self.channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())
        self.layer_names = list(self.model.feature_info.module_name())
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.weights_tag = self._load_weights(weights, allow_random_fallback, pretrained)
        self.frozen = frozen
        if frozen:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

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

    # --- weights -------------------------------------------------------------------------------
    def _load_weights(self, weights: Optional[str], allow_random_fallback: bool, pretrained: bool) -> str:
        if not pretrained or weights == "random":
            return "random"
        if weights:
            path = Path(weights).expanduser()
            load_weights_into(self.model, path, self.model_name)
            return f"file:{path.name}"
        path = weights_file_for(self.model_name)
        if path is not None:
            load_weights_into(self.model, path, self.model_name)
            return f"imagenet:{path.name}"
        try:
            return self._load_timm_download()
        except Exception as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            if allow_random_fallback:
                warnings.warn(
                    f"no weights for {self.model_name} (no --weights, no ${WEIGHTS_DIR_ENV}/"
                    f"{self.model_name}.pth, download failed: {reason}); using RANDOM weights",
                    stacklevel=3,
                )
                return "random"
            raise WeightsError(
                f"no pretrained weights for {self.model_name}: pass --weights PATH, put "
                f"{self.model_name}.pth in ${WEIGHTS_DIR_ENV}, allow the timm download, or pass "
                f"--weights random (download failed: {reason})"
            ) from None

    def _load_timm_download(self) -> str:
        if not _hub_reachable():
            # Without this check huggingface_hub retries for ~80 s before giving up offline.
            raise WeightsError("huggingface.co is unreachable (offline, or HF_HUB_OFFLINE=1)")
        timm = _timm()
        full = timm.create_model(self.model_name, pretrained=True)
        state = full.state_dict()
        result = self.model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise WeightsError(f"timm weights for {self.model_name} miss {len(result.missing_keys)} keys")
        tag = getattr(full, "pretrained_cfg", {}).get("tag") or "default"
        return f"timm:{self.model_name}.{tag}"

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
