"""Pretrained weights: an exact timm tag in, verified tensors and their provenance out.

Why this module exists. timm's bare model names resolve to other trainings than the papers
used (``wide_resnet50_2`` is timm's own ``racm_in1k``, not torchvision's ``tv_in1k`` that the
official PatchCore and Reverse Distillation code load; ``efficientnet_b4`` is the PyTorch-trained
``ra2_in1k``; ``resnet18`` is ``a1_in1k``). A number is only comparable with a paper's when the
same weights went in, so every profile names an exact tag (``<architecture>.<tag>``), exactly
that is loaded, and the record says what was loaded and from which file (its sha256).

Where the weights of a tag come from, first match wins:

1. ``--weights PATH`` (one file for every backbone of the run; its sha256 is checked against
   the table below: a file known to be *another* tag is refused, an unknown file is used and
   recorded as unverified);
2. ``$ADBENCH_WEIGHTS_DIR/<architecture>.<tag>.pth`` (or ``.safetensors``): the name states the
   tag, so the file counts for it;
3. any file in ``$ADBENCH_WEIGHTS_DIR`` whose sha256 is listed for the tag in ``KNOWN_FILES``
   (how ``../shared/weights/tf_efficientnet_lite0.pth`` counts as ``tf_efficientnet_lite0.in1k``).
   A ``<architecture>.pth`` of unknown origin never counts for a tag;
4. timm's own download of exactly that tag (needs the internet; skipped within seconds when
   huggingface.co does not answer or ``HF_HUB_OFFLINE=1``);
5. random weights: when asked (``--weights random``), or as a warned fallback of ``quick*``
   profiles only. Every other profile (``paper*``, ``miad``, ``convnext`` ...) stops.

``check_available`` runs that resolution for every tag of a run before any job starts, so a
missing file is one exit-2 error naming the exact tag, not a failed record per job.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

from adbench.errors import ConfigError, WeightsError

WEIGHTS_DIR_ENV = "ADBENCH_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".pth", ".safetensors")

#: Files known by content: sha256 -> (exact timm tag, size in bytes). A file in
#: $ADBENCH_WEIGHTS_DIR with one of these hashes counts for that tag whatever its name.
KNOWN_FILES: dict[str, tuple[str, int]] = {
    # ../shared/weights/tf_efficientnet_lite0.pth: Google's TF EfficientNet-Lite0 ImageNet
    # checkpoint with timm key names (its README: logits equal the original's), i.e. the same
    # checkpoint timm publishes as tf_efficientnet_lite0.in1k.
    "ff425cba94f9d35bf0cd8b6018ada28476f74f9ef5a475a14339ce60d849b7a4": ("tf_efficientnet_lite0.in1k", 18_853_543),
}


@dataclass(frozen=True)
class WeightsInfo:
    """What a model was initialised with; goes into every record.

    tag:    the exact timm tag whose weights were loaded, or ``random``.
    source: where they came from (``--weights <file>``, ``weights dir <file>``, ``timm download``,
            ``random (--weights random)``, ``random (fallback: ...)``, ``from scratch``).
    sha256: of the file read (None for random weights, or when timm's cache file is unknown).
    """

    tag: str
    source: str
    sha256: Optional[str] = None

    @property
    def is_random(self) -> bool:
        return self.tag == "random"

    def record_fields(self) -> dict[str, Optional[str]]:
        return {"weights_tag": self.tag, "weights_source": self.source, "weights_sha256": self.sha256}


NO_WEIGHTS = WeightsInfo("none", "no pretrained network")


# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------
def _timm():
    import timm  # lazily: timm imports torchvision, which takes seconds

    return timm


def exact_tag(name: str, option: str = "--set backbone") -> str:
    """``wide_resnet50_2.tv_in1k`` -> itself, checked to exist in timm. A bare architecture
    name is resolved to the tag timm's bare name loads (its default), so the record still says
    exactly what was loaded; profiles always spell the tag out."""
    from timm.models import get_pretrained_cfg, is_model
    from timm.models._registry import get_arch_pretrained_cfgs, split_model_name_tag

    arch, tag = split_model_name_tag(str(name))
    if not is_model(arch):
        close = _timm().list_models(f"*{arch.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"{option}={name}: unknown timm model{hint}")
    known = list(get_arch_pretrained_cfgs(arch))
    if tag:
        if f"{arch}.{tag}" not in known:
            raise ConfigError(f"{option}={name}: timm has no weights tag {tag!r} for {arch} "
                              f"(known: {', '.join(known) or 'none'})")
        return f"{arch}.{tag}"
    cfg = get_pretrained_cfg(arch)
    if cfg is None or not cfg.tag:
        return arch  # an architecture without published weights: only random init possible
    return f"{arch}.{cfg.tag}"


def architecture(tag: str) -> str:
    return str(tag).split(".", 1)[0]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    st = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def known_tag_of(path: Path) -> Optional[str]:
    """The tag ``KNOWN_FILES`` lists for this file's content (size checked first: cheap)."""
    sizes = {size for _, size in KNOWN_FILES.values()}
    try:
        if Path(path).stat().st_size not in sizes:
            return None
    except OSError:
        return None
    entry = KNOWN_FILES.get(file_sha256(path))
    return entry[0] if entry else None


def weights_dir() -> Optional[Path]:
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(folder).expanduser() if folder else None


def file_for_tag(tag: str) -> Optional[Path]:
    """The file in $ADBENCH_WEIGHTS_DIR that counts for ``tag``: named ``<tag>.pth`` (or
    ``.safetensors``), or known by its sha256. None when there is none."""
    folder = weights_dir()
    if folder is None or not folder.is_dir():
        return None
    for suffix in WEIGHT_SUFFIXES:
        named = folder / f"{tag}{suffix}"
        if named.is_file():
            return named
    for candidate in sorted(folder.iterdir()):
        if candidate.suffix in WEIGHT_SUFFIXES and candidate.is_file() and known_tag_of(candidate) == tag:
            return candidate
    return None


def _untagged_lookalikes(tag: str) -> list[Path]:
    """Files in the weights folder named after the architecture but not the tag (for hints)."""
    folder = weights_dir()
    if folder is None or not folder.is_dir():
        return []
    arch = architecture(tag)
    return [p for p in sorted(folder.iterdir()) if p.name.startswith(arch) and p.suffix in WEIGHT_SUFFIXES
            and p.is_file()]


def read_state_dict(path: Path) -> dict:
    """Read a weights file safely (``weights_only=True``; safetensors as such) and unwrap the
    common ``{"state_dict": ...}`` containers. Any problem is a one-line WeightsError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: cannot read weights file ({text[:160]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_into(model, state: Mapping, where: str, tag: str) -> None:
    """Load ``state`` into ``model``: a shape mismatch or a missing key is a WeightsError
    (unexpected keys, such as a classifier head the feature model lacks, are fine)."""
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        raise WeightsError(f"{where}: weights are for another architecture than {tag} "
                           f"({k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
    result = model.load_state_dict(dict(state), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{where}: weights do not fit {tag}: {len(missing)} missing keys (first: {missing[0]})")


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether timm's download source answers (offline runs then fail in seconds instead of
    huggingface_hub's ~80 s of retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    import socket

    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


def _explicit_file(path: Path, tag: str) -> WeightsInfo:
    """``--weights PATH``: refuse a file known to be another tag; record an unknown one as such."""
    known = known_tag_of(path)
    if known is not None and known != tag:
        raise WeightsError(f"--weights {path}: this file is {known} (by its sha256), not {tag}")
    verified = "" if known == tag else " (sha256 not in adbench's table: provenance unverified)"
    return WeightsInfo(tag, f"--weights {path.name}{verified}", file_sha256(path))


def _probe_model(tag: str):
    """The network a weights file of ``tag`` is checked against before any job: timm's
    ``features_only`` model (a file with or without its classifier fits), except where timm
    only wraps the whole network for that (ViTs: ``FeatureGetterNet``, keys prefixed ``model.``,
    final norm pruned): there the whole model, as ``components/dinov2.py`` loads it."""
    model = _timm().create_model(tag, pretrained=False, features_only=True)
    if type(model).__name__ == "FeatureGetterNet":
        return _timm().create_model(tag, pretrained=False)
    return model


def unusable_file_problem(path: Path, tag: str) -> Optional[str]:
    """Why the weights-folder file of ``tag`` cannot be used (truncated, corrupt, another
    architecture), read once before any job; None when it loads into ``tag``'s model."""
    try:
        state = read_state_dict(path)
        load_state_into(_probe_model(tag), state, f"${WEIGHTS_DIR_ENV} file {path}", tag)
    except WeightsError as exc:
        return str(exc)
    return None


def missing_message(tag: str, reason: str = "") -> str:
    """One line naming the exact tag and every way to provide it."""
    folder = weights_dir()
    where = f"${WEIGHTS_DIR_ENV} ({folder})" if folder else f"${WEIGHTS_DIR_ENV} (not set)"
    hint = ""
    lookalikes = [p.name for p in _untagged_lookalikes(tag)]
    if lookalikes:
        hint = (f"; {', '.join(lookalikes[:3])} in that folder does not count: its name does not state the tag "
                f"and its sha256 is not a known file of {tag} (rename it {tag}.pth if you know it is)")
    because = f" ({reason})" if reason else ""
    return (f"no pretrained weights for {tag}{because}: put {tag}.pth in {where}, pass --weights PATH, "
            f"allow timm's download of {tag}, or pass --weights random{hint}")


def load_pretrained(model, tag: str, weights: Optional[str] = None, *, allow_random_fallback: bool = False,
                    full_model_factory=None) -> WeightsInfo:
    """Initialise ``model`` (a timm model of ``tag``'s architecture, built with
    ``pretrained=False``) with the weights of ``tag`` by the resolution order of this module.

    ``full_model_factory()`` builds the full timm model with ``pretrained=True`` for the
    download path (a ``features_only`` model cannot download its own weights in every timm
    version); default: ``timm.create_model(tag, pretrained=True)``.
    """
    if weights == "random":
        return WeightsInfo("random", "random (--weights random)")
    if weights:
        path = Path(weights).expanduser()
        state = read_state_dict(path)  # first: a missing or unreadable file is its own error
        info = _explicit_file(path, tag)
        load_state_into(model, state, str(path), tag)
        return info
    path = file_for_tag(tag)
    if path is not None:
        load_state_into(model, read_state_dict(path), str(path), tag)
        return WeightsInfo(tag, f"weights dir {path.name}", file_sha256(path))
    try:
        if not hub_reachable():
            raise WeightsError("offline: huggingface.co is unreachable or HF_HUB_OFFLINE=1")
        factory = full_model_factory or (lambda: _timm().create_model(tag, pretrained=True))
        full = factory()
        load_state_into(model, full.state_dict(), f"timm download of {tag}", tag)
        return WeightsInfo(tag, "timm download", _timm_cache_sha256(tag))
    except Exception as exc:  # noqa: BLE001 - any download problem leads to the same decision
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        if allow_random_fallback:
            warnings.warn(f"{missing_message(tag, reason)}; quick profile: using RANDOM weights", stacklevel=3)
            return WeightsInfo("random", f"random (fallback: no weights for {tag})")
        raise WeightsError(missing_message(tag, reason)) from None


def _timm_cache_sha256(tag: str) -> Optional[str]:
    """sha256 of the file timm's download left in the Hugging Face cache, when it can be found."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(tag)
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return file_sha256(Path(found))
    except Exception:  # noqa: BLE001 - provenance is best effort on the download path
        return None
    return None


def check_available(needs: Mapping[str, Iterable[str]], weights: Optional[str], *,
                    random_allowed: Mapping[str, bool]) -> list[str]:
    """Before any job: every tag of the run (tag -> the methods needing it) must resolve.

    Returns warnings (tags that ``quick*`` methods will replace by random weights); raises one
    WeightsError naming every missing tag otherwise. ``random_allowed[method]`` says whether a
    method's profile may fall back to random weights.
    """
    if weights == "random" or not needs:
        return []
    if weights:
        path = Path(weights).expanduser()
        state = read_state_dict(path)  # empty, truncated, corrupt or unsafe: one line, now
        for tag in needs:
            _explicit_file(path, tag)  # a file known to be another tag is refused up front
            load_state_into(_probe_model(tag), state, f"--weights {path}", tag)  # the wrong architecture
        return []
    online: Optional[bool] = None
    problems, warnings_out = [], []
    for tag, methods in needs.items():
        methods = sorted(set(methods))
        found = file_for_tag(tag)
        if found is not None:
            problem = unusable_file_problem(found, tag)
            if problem:
                problems.append(f"{problem} [needed by {', '.join(methods)}]")
            continue
        if online is None:
            online = hub_reachable()
        if online:
            continue
        strict = [m for m in methods if not random_allowed.get(m, False)]
        if strict:
            problems.append(f"{missing_message(tag, 'offline')} [needed by {', '.join(strict)}]")
        else:
            warnings_out.append(f"no weights for {tag} (offline, not in ${WEIGHTS_DIR_ENV}): "
                                f"{', '.join(methods)} will use RANDOM weights (quick profile)")
    if problems:
        raise WeightsError(problems[0], problems=problems)
    return warnings_out
