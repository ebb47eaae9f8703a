"""The one interface every anomaly detector implements.

A detector is trained on normal images only (``fit``) and then scores test batches
(``predict``). Everything else a benchmark needs to treat methods alike is declared as class
attributes, so the harness never special-cases a method:

* ``Config``: a dataclass whose defaults are the ``paper`` profile; ``PROFILES`` holds the
  overrides of every other named profile (``quick`` at least).
* ``produces_maps``: whether ``predict`` returns anomaly maps (pixel metrics need them).
* ``protocols``: ``single`` (one model per category) and/or ``unified`` (one model over the
  training sets of several categories).
* ``precisions``: the ``--precision`` values it honours (bf16 needs its networks' forward
  passes in ``context.autocast()``).
* ``pretrained_tags(config)`` and ``texture_source(config)``: the pretrained weights and the
  anomaly texture set a configuration needs, so the runner checks both before any job
  (``--weights`` / ``--textures``).

The harness hands ``fit`` and ``predict`` images that already went through ``preprocess()``'s
geometry (resize, optional centre crop) as float tensors in [0, 1]. Normalisation is the
method's business (a backbone normalises with its own pretrained config; a reconstruction model
may want [0, 1]), which keeps synthetic-anomaly augmentation in plain pixel space.

Training loops, optimisers and schedules belong to the method. A method never sees test
labels or masks during ``fit``.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Optional

import numpy as np
import torch

from adbench.components.textures import TextureSet, read_texture_set
from adbench.config import MethodConfig
from adbench.data import Batch, Preprocess
from adbench.data.image_cache import DecodedImages, decode_training_images
from adbench.data.input_settings import InputSettings
from adbench.training import Checkpointing
from adbench.weights import NO_WEIGHTS, WeightsInfo

if TYPE_CHECKING:  # only for the annotation: adbench.dataset is not needed at run time here
    from adbench.dataset import CategoryInfo


@dataclass
class Prediction:
    """What a detector says about one batch.

    scores: [B] image anomaly scores (higher = more anomalous).
    maps:   [B, H, W] anomaly maps at the batch's image geometry, or None when the method
            produces no map (the record then has no pixel metrics, rather than zeros).
    """

    scores: torch.Tensor | np.ndarray
    maps: Optional[torch.Tensor | np.ndarray] = None

    def numpy(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Scores and maps as float32/float32 NumPy arrays on the CPU."""
        scores = _to_numpy(self.scores).reshape(-1).astype(np.float64)
        maps = None if self.maps is None else _to_numpy(self.maps).astype(np.float32)
        return scores, maps


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


@dataclass
class RunContext:
    """What the harness tells a detector about the job it runs in.

    device:   torch device chosen by ``--device`` (``auto`` = CUDA when present).
    seed:     the job's seed (already applied to Python, NumPy and torch).
    weights:  ``--weights`` value: None (resolve normally), a file path, or ``"random"``.
    profile:  name of the profile the config was resolved from.
    progress: whether per-job progress bars are wanted (``-q`` turns them off).
    workdir:  a scratch folder private to the job (spill files, caches); removed afterwards.
    categories: the dataset adapter's declaration of each training category of the job
              (``CategoryInfo``: texture or object, aligned or not), by name. Methods whose
              recipe depends on it read it here (CutPaste's per-location GDE is for aligned
              objects); empty when a detector is used outside the harness.
    checkpoints: the job's resumable-training state (``adbench.training``): trained methods
              run every training stage through ``checkpoints.phase(...)``. Outside the harness
              it writes nothing.
    precision: ``fp32``, ``tf32`` or ``bf16`` (``adbench.precision``): neural methods run their
              networks' forward passes in ``with context.autocast():`` and bring the outputs
              back to float32 with ``adbench.precision.full`` before losses and statistics.
    inputs:   the job's DataLoader workers and cache RAM (``adbench.data`` input pipeline). Methods that
              go over their training images more than once take them from
              ``training_images(train_loader)`` (decoded once per job) and make their batches
              with ``adbench.data.batch_stream.BatchStream``.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    weights: Optional[str] = None
    profile: str = "paper"
    progress: bool = False
    workdir: Optional[str] = None
    categories: dict[str, CategoryInfo] = field(default_factory=dict)
    checkpoints: Checkpointing = field(default_factory=Checkpointing)
    precision: str = "fp32"
    inputs: InputSettings = field(default_factory=InputSettings)
    _decoded: Optional[DecodedImages] = field(default=None, repr=False)
    _image_cache_facts: Optional[dict[str, Any]] = field(default=None, repr=False)

    def training_images(self, train_loader: Iterable[Batch]) -> torch.Tensor:
        """The job's training images as uint8 [N, 3, S, S], decoded once per job (every later
        call returns the same array: ToCoAD's stages and its memory bank share one decode)."""
        return self.decoded_training_images(train_loader).tensor

    def decoded_training_images(self, train_loader: Iterable[Batch]) -> DecodedImages:
        """``training_images`` with where they live (the record's ``image_cache``)."""
        if self._decoded is None:
            self._decoded = decode_training_images(train_loader, self.inputs, self.workdir)
        return self._decoded

    @property
    def decoded(self) -> Optional[DecodedImages]:
        """The training images if this job decoded them already (else None: nothing decodes)."""
        return self._decoded

    def release_training_images(self) -> None:
        """Training is over: free the decoded images (the harness calls it after ``fit``),
        keeping what the record says about them."""
        if self._decoded is not None:
            self._image_cache_facts = self._decoded.describe()
            self._decoded = None

    def image_cache_facts(self) -> Optional[dict[str, Any]]:
        """What the decoded-image cache held (None when no method asked for it)."""
        if self._decoded is not None:
            return self._decoded.describe()
        return self._image_cache_facts

    def autocast(self):
        """The context for the networks' forward passes (``adbench.precision.autocast``)."""
        from adbench.precision import autocast

        return autocast(self.precision, self.device)

    @property
    def allow_random_weights(self) -> bool:
        """Whether missing pretrained weights may be replaced by random ones (with a warning)."""
        return profile_allows_random_weights(self.profile)


def profile_allows_random_weights(profile: str) -> bool:
    """Only ``quick*`` profiles (CPU demos and tests) may fall back to random backbone weights,
    with a warning. Every other profile (``paper*``, ``miad``, ``convnext`` ...) reproduces a
    recipe whose numbers mean nothing on a random backbone, so it stops instead."""
    return str(profile).startswith("quick")


def profile_allows_procedural_textures(profile: str) -> bool:
    """Like weights: only ``quick*`` profiles may draw anomaly textures procedurally when no
    texture set is given (with a note); every other profile whose recipe pastes DTD images
    (``paper``, ``miad``, ``convnext`` ...) stops before any job instead."""
    return profile_allows_random_weights(profile)


def check_texture_set(folder: str) -> TextureSet:
    """The run's texture set (``--textures``), checked before any job: a DTD-layout folder whose
    every image decodes (``adbench.components.textures.read_texture_set``; one-line DataError)."""
    return read_texture_set(folder)


class Detector(abc.ABC):
    """Base class of all methods. Subclasses register with ``@register_method("name")``."""

    #: registry name, set by the decorator
    name: ClassVar[str] = ""
    #: the method's config dataclass: its defaults are the ``paper`` profile
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: overrides per named profile; ``paper`` is the dataclass defaults
    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "quick": {}}
    #: whether predict() returns anomaly maps
    produces_maps: ClassVar[bool] = True
    #: which protocols the method supports
    protocols: ClassVar[tuple[str, ...]] = ("single",)
    #: the ``--precision`` values the method honours (``adbench.precision``). tf32 is a global
    #: switch every torch method gets; bf16 needs the method to run its networks in
    #: ``context.autocast()``. A job asking for a precision its method lacks runs in fp32, and
    #: the run says so (its record states fp32).
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "tf32")
    #: whether ``fit`` takes gradient steps over batches. Under ``--shots K`` with K below the
    #: batch size, such a method gets full batches drawn with replacement (batch norm and the
    #: losses need them; the record says ``train_batches_with_replacement``); a method that
    #: estimates statistics (a mean, a Gaussian, a memory bank) sees each drawn image once, since
    #: duplicates would weight the estimate.
    trains_networks: ClassVar[bool] = False
    #: version of the method's training code: bump it when training changes, so a checkpoint
    #: written by the old code is not resumed by the new one
    VERSION: ClassVar[int] = 1

    def __init__(self, config: MethodConfig, context: RunContext | None = None):
        self.config = config
        self.context = context or RunContext()

    # --- what the harness asks before running -------------------------------------------
    def preprocess(self) -> Preprocess:
        """Geometry the harness applies to images AND masks. Default: the config's sizes."""
        return Preprocess(
            image_size=int(getattr(self.config, "image_size", 256)),
            crop_size=getattr(self.config, "crop_size", None),
        )

    @property
    def device(self) -> torch.device:
        return self.context.device

    @classmethod
    def pretrained_tags(cls, config: MethodConfig) -> list[str]:
        """The exact timm tags whose ImageNet weights this configuration loads, so the runner
        can check them all before any job starts. Default: the config's ``backbone``, unless a
        ``pretrained`` field says the network trains from scratch. A method with other
        pretrained parts overrides this."""
        backbone = getattr(config, "backbone", None)
        if not backbone or not getattr(config, "pretrained", True):
            return []
        return [str(backbone)]

    @classmethod
    def check_protocol(cls, config: MethodConfig, training_categories: list[str], profile: str) -> None:
        """Called before any job with the categories one job of the run trains on (one under
        ``--protocol single``, all of them under ``unified``). A recipe that prescribes a
        protocol (UniAD's ``miad`` profile trains unified) raises a ConfigError when the run
        contradicts it, so the run stops up front instead of failing every job. Default: any."""

    @classmethod
    def check_shots(cls, config: MethodConfig, shots: int) -> None:
        """Raise ``adbench.errors.FewShotError`` (one line saying why) when the method cannot fit
        on ``shots`` training images per category, e.g. a covariance that needs more samples than
        dimensions. Called before fitting each k-shot job; the default accepts any K."""

    @classmethod
    def texture_source(cls, config: MethodConfig) -> Optional[str]:
        """Where this configuration's synthetic anomalies take their textures from, so the
        runner can check it before any job: ``"dtd"`` (a texture image set, ``--textures DIR``;
        required unless the profile allows procedural textures), ``"procedural"`` (chosen
        explicitly: a note), or None (the configuration pastes no textures). Default: None. A
        configuration the runner must refuse (a folder written into it instead of
        ``--textures``) raises a ConfigError here."""
        return None

    @classmethod
    def with_textures(cls, config: MethodConfig, textures: TextureSet) -> MethodConfig:
        """``config`` bound to the run's checked texture set (the runner calls it for every
        configuration whose ``texture_source`` is ``"dtd"``). Default: the conventional
        ``anomaly_source`` field takes ``textures.spec`` (the folder, its fingerprint and its
        number of images); the method's config hash should keep the fingerprint and leave the
        folder out (``adbench.components.textures.location_free``)."""
        return dataclasses.replace(config, anomaly_source=textures.spec)

    def pretrained_backbone(self, model_name: str, layers, *, frozen: bool = True):
        """The shared timm feature extractor, under this job's weights policy
        (``adbench.weights``: ``--weights`` wins, then $ADBENCH_WEIGHTS_DIR, then timm's
        download of the exact tag; only ``quick*`` profiles may fall back to random weights)."""
        from adbench.components.backbone import Backbone

        return Backbone(
            model_name,
            layers,
            weights=self.context.weights,
            frozen=frozen,
            allow_random_fallback=self.context.allow_random_weights,
        ).to(self.device)

    # --- the two verbs -------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, train_loader: Iterable[Batch]) -> None:
        """Learn from normal training images (batches carry no test labels or masks)."""

    @abc.abstractmethod
    def predict(self, batch: Batch) -> Prediction:
        """Score one test batch."""

    # --- what the record says about the trained model ---------------------------------------
    def weights_info(self) -> WeightsInfo:
        """What the pretrained part was initialised with (exact tag, source file, sha256);
        ``NO_WEIGHTS`` for methods without a pretrained network. Methods with a backbone
        return its ``weights``."""
        return NO_WEIGHTS

    def knn_device(self) -> Optional[str]:
        """Where this detector's nearest-neighbour search ran (``"cuda:0 torch"``, ``"cpu
        faiss"``...), read from the index it built; None for methods without one."""
        return None

    def num_parameters(self) -> int:
        """Parameters of the trained model (0 for non-parametric parts like memory banks)."""
        total = 0
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                total += sum(p.numel() for p in value.parameters())
        return total

    def record_extras(self) -> dict[str, Any]:
        """Method-specific facts a reader needs (e.g. which texture source DRAEM used)."""
        return {}
