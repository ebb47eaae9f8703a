"""UniAD: a unified model for multi-class anomaly detection (You et al., NeurIPS 2022).

Method, in the paper's order:

1. **Features.** A frozen ImageNet EfficientNet-B4 gives stages 1-4 (timm ``features_only``
   indices 0-3: 24 + 32 + 56 + 160 = 272 channels at strides 2, 4, 8, 16). Each map is resized
   bilinearly (``align_corners=True``, as the official ``nn.UpsamplingBilinear2d`` neck) to the
   stride-16 grid of the deepest stage (14 x 14 at 224 x 224) and concatenated. The channel
   count comes from the backbone, so tf_efficientnet_lite0 (16 + 24 + 40 + 112 = 192) works too.
2. **Reconstruction.** ``adbench.methods._uniad_neighbor_transformer``: 1x1 projection to width
   256, 4 encoder + 4 decoder layers, 8 heads, a learned query per decoder layer, 7 x 7
   neighbour-masked attention, learned positional embedding, feature jittering (scale 20,
   training only); projection back to the input width.
3. **Training.** MSE between reconstructed and input (clean) features. AdamW lr 1e-4, weight
   decay 1e-4, gradient-norm clipping 0.1, batch 64, 224 x 224 resize without crop, no data
   augmentation; 500 epochs with the learning rate x0.1 after 400 (MIAD appendix A.2.6; the
   official config trains 1000 epochs with the step at 800, ``--set epochs=1000
   lr_step_epoch=800``). Always the last epoch's model. The official training script evaluates on
   the TEST set every 10 epochs and keeps the checkpoint with the best test pixel AUROC
   (``key_metric: mean_pixel_auc``); we never do, so expect some gap to its published numbers
   (unified MVTec 96.5 image / 96.8 pixel). Its evaluation also replaces an AUROC below 0.5 by
   1 - AUROC; ours does not.
4. **Scores.** Map = L2 norm over channels of (reconstruction - input) at every grid position,
   upsampled bilinearly to the input size (official ``models/reconstructions/uniad.py``:
   ``sqrt(sum((feature_rec - feature_align) ** 2))`` then ``nn.UpsamplingBilinear2d``). Image
   score = max of that map after a 16 x 16 average pool with stride 1 (official
   ``avgpool_size: [16, 16]`` on the 224 x 224 map, i.e. one grid cell; ``score_pool`` in
   pixels). The returned pixel map is not smoothed: the official code has no blur anywhere
   (no Gaussian / smoothing of the prediction in any of its ``*.py`` files at commit a5b9d9d).
   ``blur_sigma`` > 0 adds the harness's shared Gaussian as an option; the image score is
   computed on the unsmoothed map either way.

Pretrained weights: ``tf_efficientnet_b4.aa_in1k``. The official backbone
(``models/backbones/efficientnet/utils.py``, ``advprop=False``) downloads lukemelas'
``efficientnet-b4-6ed6700e.pth``; lukemelas/EfficientNet-PyTorch replaced its B4 file by that
one in commit f1cedc8 (2019-08-01), its README of July 31, 2019 saying all pretrained models
"have been updated to use AutoAugment preprocessing", i.e. the port of TensorFlow's AutoAugment
B4 checkpoint (tensorflow/tpu ``ckptsaug/efficientnet-b4``). timm's port of that checkpoint,
with TensorFlow's "same" padding as lukemelas' port also has, is ``tf_efficientnet_b4.aa_in1k``
(``tf_efficientnet_b4_aa-818f208c.pth``). The two files are the same training by provenance,
not by bytes (different key names). Not the bare name: today's bare ``tf_efficientnet_b4`` is
the NoisyStudent ``ns_jft_in1k`` and bare ``efficientnet_b4`` timm's own ``ra2_in1k``.
Inputs are normalised with ImageNet mean / std, as the official config and the tag's timm
``pretrained_cfg`` both say.

Profiles. ``paper`` = MIAD appendix A.2.6 plus the official code where the appendix is silent.
``miad`` has ``paper``'s values and adds the protocol (below): the appendix's values (B4 stages
1-4, 272 channels, 224 px, 500 epochs on batch 64, AdamW weight decay 1e-4, lr 1e-4 x0.1 after
400, no augmentation) are the paper profile's, and "other settings are consistent with the
original code" is what ``paper`` already takes from ``experiments/MVTec-AD/config.yaml``
(transformer 256 wide, 4 + 4 layers, 8 heads, 7 x 7 neighbour mask in encoder and both decoder
attentions, jitter scale 20 with probability 1, gradient clipping 0.1, no map blur). The
official 1000 epochs / step 800 is ``--set epochs=1000 lr_step_epoch=800``.

``miad`` is unified training (``recipe_protocol=unified``): one model over every MIAD scenario,
each scenario evaluated on its own test set. The appendix does not name the protocol; the
evidence, all pointing one way:

* A.2.6's wording: "The model is trained for 500 epochs on 8 GPUs (NVIDIA Tesla V100 32GB) with
  batch size 64. ... Other settings are consistent with the original code." 8 GPUs and batch 64
  are the official unified MVTec run's set-up (``experiments/MVTec-AD/config.yaml``:
  ``batch_size: 8`` per process; the official README: "8 GPUs (NVIDIA Tesla V100 16GB) ... A
  unified model for all categories"), where every other method of the appendix ran on 1 GPU;
  and the original code's one industrial configuration trains on ``data/MVTec-AD/train.json``,
  the normal images of all 15 categories together. (The singular "the model" alone proves
  nothing: A.2.4 writes "The neural network ... is trained" for DRAEM, a per-category method.)
* The UniAD paper's protocol: its main results (MVTec-AD 96.5 / 96.8) are one unified model for
  the 15 categories; one model per category is its comparison setting.
* MIAD's results tables (not in ../shared/seeds: only the appendix is) report UniAD per
  scenario like the other methods; a unified model is evaluated per category too, so that
  layout is no evidence for single training.

The other protocol is a switch: ``--set recipe_protocol=single`` trains one model per scenario
with ``miad``'s values. ``paper`` and ``quick`` leave it at ``any`` (trained per category by
default like every method, ``--protocol unified`` as the paper does: ../shared/docs/METHODS.md).
``adbench run`` cannot take a default ``--protocol`` from a profile (``runner.select_methods``
reads only ``Detector.protocols``), so the recipe's protocol is checked when the job starts
(``check_recipe_protocol``): a ``--profile miad`` job that trains on one category (the default
``--protocol single``) stops at once, before any feature is extracted, with one line saying to
add ``--protocol unified`` or ``--set recipe_protocol=single``; a ``single`` recipe stops a
job over several categories. Which one ran is in every record: ``protocol`` and
``training_categories`` (what the job did) and ``config.recipe_protocol`` (what the recipe
asked for). The check reads the number of training categories (``RunContext.categories``),
which is all a detector knows of the job: a unified job narrowed to one category with
``--category`` is refused as well (one category is single training).

No silent options (``adbench.config.reject_inert``): ``lr_gamma`` and ``lr_step_epoch`` have no effect
when training ends before the step (``lr_step_epoch >= epochs``), ``lr_step_epoch`` none when
``lr_gamma`` is 1; a non-default value there is a ConfigError. ``blur_sigma`` must be >= 0 and
``lr_step_epoch`` >= 1.

Protocols: ``single`` (one model per category) and ``unified`` (one model on the union of the
categories' training sets, which is what the paper reports). ``fit`` needs nothing special for
unified: it reconstructs whatever normal features the loader brings; the record lists the
categories it was trained on.

Feature cache (not in the paper, which re-extracts every epoch): the backbone is frozen and
there is no augmentation, so the training features are identical every epoch. They are extracted
once per job (each image decoded once) and kept as float32 in RAM when they fit both
``feature_cache_gb`` and the job's cache RAM (``--cache-gb``; about 43 MB for 209 images with B4
at 224). Otherwise (the unified protocol over MIAD: 70,000 images, ~0.5 MB each) they spill to a
float16 memory-mapped file in the job's work folder (``--workdir``) and are read back as float32:
relative rounding ~5e-4, below what the MSE on jittered features resolves, and far cheaper than
decoding and re-extracting every image in each of 500 epochs. Jittering happens after
extraction, on the device.

Cost of the paper profile on this 2-core CPU (efficientnet_b4, random weights, 224 px; measured
on a few batches while the machine was heavily shared, load average 30-37, so wall times are
inflated): feature extraction 0.68 CPU-s per image (once), training 1.24-1.37 CPU-s per image
per epoch (3 steps of batch 8; loss 1.015 -> 0.820 -> 0.696). A bottle-size epoch (209 images)
is ~260 CPU-s; an earlier wall-clock measurement at lower load (1-12) gave 88.7 s per batch of
64, i.e. ~290 s per bottle epoch: 500 epochs take ~1.5-2 days here. It needs a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from adbench.components.blur import gaussian_blur
from adbench.methods._uniad_neighbor_transformer import ReconstructionTransformer
from adbench.config import MethodConfig
from adbench.data import Batch
from adbench.detector import Detector, Prediction
from adbench.errors import ConfigError
from adbench.data.arrays import ram_or_disk
from adbench.precision import full
from adbench.registry import register_method


@dataclass
class UniADConfig(MethodConfig):
    image_size: int = 224  # MIAD appendix / official config: 224 x 224 resize
    crop_size: Optional[int] = None
    batch_size: int = 64  # MIAD appendix (official: 8 per GPU x 8 GPUs)
    backbone: str = "tf_efficientnet_b4.aa_in1k"
    layers: tuple[int, ...] = (0, 1, 2, 3)  # stages 1-4: 272 channels for B4
    hidden_dim: int = 256
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    neighbour_size: int = 7  # 0 disables the mask
    jitter_scale: float = 20.0  # 0 disables jittering
    epochs: int = 500
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_step_epoch: int = 400  # lr x lr_gamma every lr_step_epoch epochs (StepLR, as official)
    lr_gamma: float = 0.1
    grad_clip: float = 0.1
    score_pool: int = 16  # px, average pool before the image-level max
    blur_sigma: float = 0.0  # Gaussian smoothing of the returned pixel map; 0 = official (none)
    feature_cache_gb: float = 4.0  # keep training features in RAM up to this size
    # protocol the recipe is defined for: any (whatever --protocol says), or single / unified,
    # which stop a job trained the other way (check_recipe_protocol); miad: unified
    recipe_protocol: Literal["any", "single", "unified"] = "any"

    def __post_init__(self):
        if self.blur_sigma < 0:
            raise ConfigError(f"--set blur_sigma={self.blur_sigma}: must be >= 0 (0 = no blur)")
        if self.lr_step_epoch < 1:
            raise ConfigError(f"--set lr_step_epoch={self.lr_step_epoch}: must be >= 1")

    def inert_options(self) -> dict[str, str]:
        """Options this configuration does not read, with the reason (no silent options;
        ``resolve_config`` rejects one the user set: ``adbench.config.reject_inert``)."""
        inert: dict[str, str] = {}
        if self.lr_step_epoch >= self.epochs:
            why = f"training ends (epochs={self.epochs}) before the step at lr_step_epoch={self.lr_step_epoch}"
            inert.update(lr_gamma=why, lr_step_epoch=why)
        elif self.lr_gamma == 1:
            inert["lr_step_epoch"] = "lr_gamma=1 leaves the learning rate unchanged"
        return inert


def check_recipe_protocol(config: UniADConfig, categories: Mapping[str, object], profile: str = "") -> None:
    """A ConfigError when the job's training contradicts ``recipe_protocol``: a single job trains
    on one category, a unified one on every selected category (``RunContext.categories``; empty
    outside the harness, where nothing is checked)."""
    wanted, names = config.recipe_protocol, sorted(categories)
    if wanted == "any" or not names:
        return
    where = f"--profile {profile} " if profile else ""
    if wanted == "unified" and len(names) == 1:
        raise ConfigError(
            f"uniad {where}trains one model over every category (recipe_protocol=unified), but this job trains "
            f"on {names[0]} alone: add --protocol unified (over several categories), or --set "
            f"recipe_protocol=single to train one model per category")
    if wanted == "single" and len(names) > 1:
        raise ConfigError(
            f"uniad {where}trains one model per category (recipe_protocol=single), but this job trains one "
            f"model over {len(names)} categories (--protocol unified): drop --protocol unified, or --set "
            f"recipe_protocol=unified")


@register_method("uniad")
class UniAD(Detector):
    """Transformer reconstruction of frozen multi-scale features; see the module docstring."""
    trains_networks = True  # k-shot sets smaller than a batch: drawn with replacement (Detector)

    VERSION = 2  # 2: resumable training, data order by (seed, epoch)
    Config = UniADConfig
    PROFILES = {
        "paper": {},
        # MIAD appendix A.2.6 + official code = the paper profile's values, unified training
        # (module docstring: why unified; --set recipe_protocol=single for one model per category)
        "miad": {"recipe_protocol": "unified"},
        # A 2-core CPU budget: lite0 has offline ImageNet weights; a half-width, half-depth
        # transformer (same design: learned queries, 7x7 neighbour mask, jitter 20) is ~5x
        # cheaper per image (FLOP count); batch 16 and lr 1e-3 give ~10x more, larger steps than
        # the paper's batch 64 / 1e-4 in 10 epochs. Estimated ~5 min bottle / ~15 min
        # magnetic_tile on free cores; see results/ for what was measured under load. No lr step
        # within 10 epochs (lr_step_epoch stays 400: a value >= epochs has no effect, so setting
        # it would be a silent option). No map blur, as the paper profile and official code:
        # MVTec bottle, same training, pixel AUROC / AUPRO 0.875 / 0.761 (blur_sigma=4, the
        # earlier quick profile: 0.881 / 0.774); image AUROC 0.955 either way.
        "quick": {
            "backbone": "tf_efficientnet_lite0.in1k", "hidden_dim": 128, "encoder_layers": 2,
            "decoder_layers": 2, "ff_dim": 512, "batch_size": 16, "lr": 1e-3, "epochs": 10,
        },
    }
    produces_maps = True
    protocols = ("single", "unified")
    precisions = ("fp32", "tf32", "bf16")  # networks run in context.autocast()

    @classmethod
    def check_protocol(cls, config: UniADConfig, training_categories: list[str], profile: str) -> None:
        """Before any job: the run's protocol must be the recipe's (``recipe_protocol``)."""
        check_recipe_protocol(config, dict.fromkeys(training_categories), profile)

    def __init__(self, config: UniADConfig, context=None):
        super().__init__(config, context)
        cfg = self.config
        check_recipe_protocol(cfg, self.context.categories, self.context.profile)  # outside the runner too
        if cfg.crop_size is not None:
            size = cfg.crop_size
        else:
            size = cfg.image_size
        self.backbone = self.pretrained_backbone(cfg.backbone, cfg.layers)
        stride = max(self.backbone.strides)
        if size % stride:
            raise ConfigError(f"--set image_size={size}: must be a multiple of the backbone stride {stride}")
        self.grid = (size // stride, size // stride)
        self.feature_cache: Optional[dict] = None  # where the training features were kept
        if cfg.neighbour_size >= 2 * max(self.grid) - 1:
            raise ConfigError(
                f"--set neighbour_size={cfg.neighbour_size}: the window would mask the whole "
                f"{self.grid[0]}x{self.grid[1]} grid"
            )
        self.model = ReconstructionTransformer(
            sum(self.backbone.channels),
            self.grid,
            dim=cfg.hidden_dim,
            heads=cfg.heads,
            encoder_layers=cfg.encoder_layers,
            decoder_layers=cfg.decoder_layers,
            ff_dim=cfg.ff_dim,
            dropout=cfg.dropout,
            neighbour_size=cfg.neighbour_size,
            jitter_scale=cfg.jitter_scale,
        ).to(self.device)
        self.loss_history: list[float] = []
        self.train_categories: list[str] = []

    # --- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> aligned multi-scale features [B, C, gh, gw]."""
        with self.context.autocast():
            maps = full(self.backbone(images.to(self.device)))
        resized = [F.interpolate(m, size=self.grid, mode="bilinear", align_corners=True) for m in maps]
        return torch.cat(resized, dim=1)

    # --- training ------------------------------------------------------------------------------
    def fit(self, train_loader: Iterable[Batch]) -> None:
        """AdamW on the feature-reconstruction MSE, resumable (``adbench.training``); the
        feature jitter and dropout draw from torch's generator, which checkpoints capture."""
        cfg = self.config
        checkpoints = self.context.checkpoints
        if checkpoints.finished("train"):  # trained in an earlier attempt: no features needed
            phase = checkpoints.phase("train", modules={"model": self.model})
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step_epoch, gamma=cfg.lr_gamma)
            cached = self._cache_features(train_loader)
            n = len(cached)
            if n == 0:
                raise ValueError("uniad: the training loader yielded no images")
            phase = checkpoints.phase("train", modules={"model": self.model}, optimizers={"adamw": optimizer},
                                      schedulers={"lr": scheduler})
            bar = tqdm(phase.epochs(cfg.epochs), total=cfg.epochs, initial=phase.epoch, desc="uniad", unit="epoch",
                       disable=not self.context.progress)
            for epoch in bar:
                self.model.train()
                for idx in phase.batches(epoch, n, cfg.batch_size):
                    feats = cached[idx].to(self.device, non_blocking=True).float()
                    with self.context.autocast():
                        rec = self.model(feats)
                    loss = F.mse_loss(full(rec), feats)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    optimizer.step()
                    phase.step_done(loss, len(feats))
                scheduler.step()
                bar.set_postfix(loss=f"{phase.epoch_done():.4f}")
            phase.finish(extra={"train_categories": list(self.train_categories)})
            checkpoints.training_done()
        self.train_categories = list(phase.extra_state.get("train_categories", self.train_categories))
        self.loss_history = list(phase.history)
        self.model.eval()

    def _cache_features(self, train_loader) -> torch.Tensor:
        """Every training image's features, extracted once: float32 in RAM when they fit
        ``feature_cache_gb`` and the job's cache RAM, else a float16 memory-mapped file in the
        job's work folder (module docstring). ``self.feature_cache`` says which."""
        # the images the loader yields: its sampler's length (a k-shot set smaller than a batch is
        # drawn with replacement to one full batch, more than the dataset holds)
        n = len(getattr(train_loader, "sampler", ()) or ())
        if not n:  # batches from outside the harness (any iterable): read them once
            train_loader = list(train_loader)
            n = sum(len(b) for b in train_loader)
        shape = (n, sum(self.backbone.channels), *self.grid)
        budget = min(int(self.config.feature_cache_gb * 2**30), int(self.context.inputs.cache_bytes))
        if math.prod(shape) * 4 <= budget:
            placed = ram_or_disk(shape, torch.float32, budget, self.context.workdir, "uniad-features")
        else:
            placed = ram_or_disk(shape, torch.float16, 0, self.context.workdir, "uniad-features")
        start = 0
        for batch in train_loader:
            self._note_categories(batch)
            feats = self.features(batch.images)
            placed.tensor[start : start + len(feats)] = feats.to("cpu", placed.tensor.dtype)
            start += len(feats)
        self.feature_cache = placed.describe()
        if placed.where == "ram" and self.device.type == "cuda":
            return placed.tensor[:start].to(self.device)  # as the old RAM cache: kept on the GPU
        return placed.tensor[:start]

    def _note_categories(self, batch: Batch) -> None:
        for name in batch.categories:
            if name not in self.train_categories:
                self.train_categories.append(name)

    # --- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        self.model.eval()
        feats = self.features(batch.images)
        with self.context.autocast():
            rec = full(self.model(feats))
        grid_map = torch.sqrt(((rec - feats) ** 2).sum(dim=1, keepdim=True))  # [B, 1, gh, gw]
        height, width = batch.images.shape[-2:]
        maps = F.interpolate(grid_map, size=(height, width), mode="bilinear", align_corners=True)
        pool = max(1, min(self.config.score_pool, height, width))
        scores = F.avg_pool2d(maps, pool, stride=1).flatten(1).max(dim=1).values
        maps = gaussian_blur(maps, self.config.blur_sigma).squeeze(1)
        return Prediction(scores=scores.cpu(), maps=maps.cpu())

    # --- record --------------------------------------------------------------------------------
    def weights_info(self):
        return self.backbone.weights

    def record_extras(self) -> dict:
        return {
            "feature_channels": sum(self.backbone.channels),
            "feature_grid": list(self.grid),
            "train_categories": list(self.train_categories),
            "train_loss_per_epoch": [round(v, 5) for v in self.loss_history],
            "checkpoint": "last epoch (never selected on test data)",
            "feature_cache": self.feature_cache,
        }
