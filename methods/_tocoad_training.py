"""ToCoAD's two training stages (Liang et al., seed 002, Sec. 3.1-3.2), independent of scoring.

``ToCoADTrainer`` owns one trainable extractor F (an adbench ``Backbone`` over the union of the
layers every part needs: D's input, the contrastive layers, the memory-bank layers), the
discriminative network D and the contrastive heads C, and runs

* stage I, DNP (``fit_dnp``): F frozen; every training image goes through the anomaly
  generator G (slight random rotation, then a random multiple of 90 degrees, then a synthetic
  anomaly); D segments it from F's features; L_dis = focal loss (eq. 2, always focal); Adam,
  step decay;
* stage II, NCL (``fit_ncl``): D frozen (weights and batch-norm statistics); F and C trained
  with ``lambda * L_sym + (1 - lambda) * L_neg`` (eq. 6), L_sym the symmetric SimSiam loss of
  M views (eq. 3-5, ``tocoad_networks``; views: ``simsiam_views``), L_neg the focal loss
  (or cross-entropy, ``neg_loss=ce``, Table 6) of the frozen D on fresh synthetic anomalies
  seen through the *current* F; SGD with momentum, weight decay and a cosine schedule; F
  optionally frozen for the first ``freeze_epochs`` (seed 000).

The method module (``methods/tocoad.py``) then builds the PatchCore memory bank on F.

Synthetic anomalies are drawn where the batches are made: in the job's DataLoader workers
(``adbench.data`` input pipeline), image ``i`` of epoch ``e`` of a stage from ``sample_rng(seed, stage, e, i)``,
so neither the number of workers nor a resume changes a batch. G's Perlin anomalies paste images
of the run's texture set (``--textures``, bound into ``cfg.anomaly_source`` by the runner with
its fingerprint, which ``TextureSource`` checks again in the job) or, where no set is used
(``quick`` without one, ``anomaly_source=procedural``), procedural textures (issue 24).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adbench.components.backbone import Backbone
from adbench.training import Checkpointing
from adbench.components.losses import focal_loss
from adbench.components.synth import (TextureSource, cutmix, cutout, cutpaste, nsa_patch, numpy_rng,
                                      perlin_texture_anomaly)
from adbench.methods._tocoad_views import SimSiamViews
from adbench.methods._tocoad_networks import SiameseHeads, build_discriminator, ema_update
from adbench.errors import ConfigError
from adbench.data.batch_stream import BatchStream, gather, sample_rng, to_device
from adbench.data.input_settings import InputSettings
from adbench.data.image_cache import as_float
from adbench.precision import full


def parse_ratio(text: str) -> tuple[int, int]:
    """``"1:1"`` -> (1, 1): synthetic : normal share of a training batch (seed 000 Table 1)."""
    try:
        a, b = (int(s) for s in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--set synthetic_ratio={text!r}: expected two integers like 1:1") from None
    if a < 0 or b < 0 or a + b == 0 or a == 0:
        raise ConfigError(f"--set synthetic_ratio={text!r}: the synthetic share must be > 0")
    return a, b


class AnomalyGenerator:
    """G of Fig. 3: rotate the base image (slight angle, then k x 90 degrees), add an anomaly.

    kind: ``perlin`` (Perlin mask filled from a texture source: the paper's default), ``cutpaste``
    (CutPaste patch of the same image, Table 7), ``nsa`` (NSA-style Poisson-blended patch from
    another training image, Table 7), ``patch`` (seed 000: a box from the same or another image
    with colour jitter or pepper noise), ``cutout`` (seed 000 Sec. 1.4, "Cutout masks an area of
    the image": a CutPaste-sized box filled with ``cutout_fill``, grey / the image mean / a random
    colour, ``synth.cutout``; the mask is the box). ``synthetic_share``: probability that a
    sample gets an anomaly (1.0 = eq. 1, every image; seed 000's 1:1 is 0.5). Masks are bool
    [H, W]; outside the mask the output is the rotated base image, bit for bit.

    ``batch(images, rngs)`` draws everything of sample ``k`` (angle, turn, whether and which
    anomaly, the other image it borrows from) from ``rngs[k]`` alone: with one generator per
    (stage, epoch, image) a batch is the same whichever process makes it.
    """

    def __init__(self, kind: str = "perlin", texture: Optional[TextureSource] = None,
                 rotate_degrees: float = 10.0, rotate90: bool = True, synthetic_share: float = 1.0,
                 patch_source: str = "same", patch_transform: str = "jitter", beta_max: float = 0.8,
                 cutout_fill: str = "grey"):
        if kind not in ("perlin", "cutpaste", "nsa", "patch", "cutout"):
            raise ConfigError(f"--set generator={kind!r}: expected perlin, cutpaste, nsa, patch or cutout")
        self.kind, self.texture = kind, texture or TextureSource(None)
        self.rotate_degrees, self.rotate90 = float(rotate_degrees), bool(rotate90)
        self.synthetic_share = float(synthetic_share)
        self.patch_source, self.patch_transform, self.beta_max = patch_source, patch_transform, beta_max
        self.cutout_fill = cutout_fill

    def rotate(self, images: torch.Tensor, rngs: Sequence[np.random.Generator]) -> torch.Tensor:
        """Batched: image ``k`` turned by U(-rotate_degrees, rotate_degrees) degrees (bilinear,
        zero fill, kornia), then by a random multiple of 90 degrees, both drawn from ``rngs[k]``."""
        from kornia.geometry.transform import rotate

        if self.rotate_degrees > 0:
            angles = np.array([rng.uniform(-self.rotate_degrees, self.rotate_degrees) for rng in rngs], np.float32)
            images = rotate(images, torch.from_numpy(angles).to(images.device))
        if self.rotate90:
            turns = [int(rng.integers(4)) for rng in rngs]
            images = torch.stack([torch.rot90(img, k, dims=(-2, -1)) for img, k in zip(images, turns)])
        return images

    def anomaly(self, image: torch.Tensor, other: torch.Tensor, rng: np.random.Generator):
        if self.kind == "perlin":
            tex = self.texture.sample(tuple(image.shape[-2:]), rng)
            return perlin_texture_anomaly(image, tex, rng, beta_range=(0.0, self.beta_max), nonempty=True)
        if self.kind == "cutpaste":
            return cutpaste(image, rng)
        if self.kind == "nsa":
            return nsa_patch(image, rng, source=other)
        if self.kind == "cutout":
            return cutout(image, rng, fill=self.cutout_fill)
        if self.patch_source == "other":
            return cutmix(image, other, rng, patch_transform=self.patch_transform)
        return cutpaste(image, rng, patch_transform=self.patch_transform)

    def batch(self, images: torch.Tensor, rngs: Sequence[np.random.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """images float [B, 3, H, W] in [0, 1], one generator per image -> (augmented images,
        masks bool [B, H, W])."""
        base = self.rotate(images.float(), rngs).clamp(0.0, 1.0)
        out, masks = [], []
        n = base.shape[0]
        for img, rng in zip(base, rngs):
            if rng.random() < self.synthetic_share:
                img, mask = self.anomaly(img, base[int(rng.integers(n))], rng)
            else:
                mask = torch.zeros(img.shape[-2:], dtype=torch.bool)
            out.append(img)
            masks.append(mask)
        return torch.stack(out), torch.stack(masks)

    def __call__(self, images: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` with one generator (numpy or torch) for the whole batch (tests, diagnostics)."""
        rng = numpy_rng(generator)
        return self.batch(images, [rng] * len(images))


class SyntheticBatches:
    """The batch function of a ToCoAD stage's plan (``adbench.data.batch_stream``), run in the job's
    DataLoader workers: G's synthetic version of the ticket's images, image ``i`` of epoch
    ``e`` drawn from ``sample_rng(seed, stream, e, i)``. ``with_normals``: the normal images
    (as stored: uint8 from the cache) come first, for stage II's SimSiam views.
    A class, not a closure: picklable where workers are not forked."""

    def __init__(self, images: torch.Tensor, generator: AnomalyGenerator, seed: int, stream: str,
                 with_normals: bool):
        self.images, self.G, self.seed, self.stream = images, generator, int(seed), stream
        self.with_normals = with_normals

    def __call__(self, ticket) -> tuple[torch.Tensor, ...]:
        epoch, idx = ticket
        normals = self.images[idx]
        syn, masks = synthesize(self.G, as_float(normals), self.seed, self.stream, epoch, idx)
        return (normals, syn, masks) if self.with_normals else (syn, masks)


def synthesize(generator: AnomalyGenerator, images: torch.Tensor, seed: int, stream: str, epoch: int,
               idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """G on float ``images`` that are images ``idx`` of ``epoch``: sample ``k`` drawn from
    ``sample_rng(seed, stream, epoch, idx[k])`` (the one place these generators are made)."""
    return generator.batch(images, [sample_rng(seed, stream, epoch, int(i)) for i in idx])


class ToCoADTrainer:
    """F, D and C plus the two training stages. ``cfg`` is a ``ToCoADConfig``.

    Randomness: batch order from each stage's ``Phase`` (seeded by job seed, stage and epoch),
    synthetic anomalies from ``sample_rng(seed, stage stream, epoch, image)`` in the batch
    function (``SyntheticBatches``), SimSiam views from ``self.view_gen`` (torch), never from
    global state (F, D and C are initialised from torch's global generator, which the runner
    seeds). ``inputs``: the job's DataLoader workers (``adbench.data`` input pipeline).

    Both stages are resumable (``adbench.training``): ``checkpoints`` (the job's) saves them as
    phases ``dnp`` and ``ncl``; a resumed job skips a finished stage and continues the other at
    its saved epoch and step.
    """

    def __init__(self, cfg, *, weights=None, allow_random_fallback: bool = False,
                 device: torch.device = torch.device("cpu"), seed: int = 0, progress: bool = False,
                 checkpoints: Optional[Checkpointing] = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 inputs: Optional[InputSettings] = None):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.seed = int(seed)
        self.inputs = inputs if inputs is not None else InputSettings()
        # the networks' forward passes run under --precision (adbench.precision); losses get
        # float32 logits
        self.autocast = autocast
        self.checkpoints = checkpoints if checkpoints is not None else Checkpointing(seed=int(seed))
        self.view_gen = torch.Generator().manual_seed(int(seed) + 1)
        self.with_dnp = getattr(cfg, "stages", "both") == "both"
        dnp_layers = set(cfg.dnp_layers) if self.with_dnp else set()
        self.union = tuple(sorted(set(cfg.layers) | dnp_layers | set(cfg.contrastive_layers)))
        self.F = Backbone(cfg.backbone, self.union, weights=weights, frozen=False,
                          allow_random_fallback=allow_random_fallback).to(device)
        self.F.eval()  # batch-norm statistics stay ImageNet's in every stage (see fit_ncl)
        idx = {layer: i for i, layer in enumerate(self.F.layer_indices)}
        self.pick_dnp = [idx[layer] for layer in sorted(dnp_layers)]
        self.pick_cl = [idx[layer] for layer in sorted(cfg.contrastive_layers)]
        self.pick_bank = [idx[layer] for layer in sorted(cfg.layers)]
        self.D: Optional[torch.nn.Module] = None  # stages=ncl: no D (Table 5, row 2)
        if self.with_dnp:
            self.D = build_discriminator(cfg.dnp_decoder, [self.F.channels[i] for i in self.pick_dnp],
                                         [self.F.strides[i] for i in self.pick_dnp], width=cfg.dnp_width,
                                         blocks=cfg.dnp_blocks).to(device)
        self.C = SiameseHeads([self.F.channels[i] for i in self.pick_cl], dim=cfg.proj_dim,
                              concat=cfg.contrastive_concat, mode=cfg.contrastive, ema=cfg.byol_ema).to(device)
        self.views: Optional[SimSiamViews] = None
        self.F_target = None  # BYOL's EMA copy of F, made when stage II starts
        # the run's texture set as the runner bound it (--textures: folder + fingerprint, checked
        # again here), or procedural textures (anomaly_source None outside a run, "procedural")
        texture = TextureSource(cfg.anomaly_source if self.with_dnp and cfg.generator == "perlin" else None)
        a, b = parse_ratio(cfg.synthetic_ratio)
        self.G = AnomalyGenerator(cfg.generator, texture, cfg.rotate_degrees, cfg.rotate90, a / (a + b),
                                  cfg.patch_source, cfg.patch_transform, cutout_fill=cfg.cutout_fill)
        self.history: dict[str, list[float]] = {"dnp_loss": [], "ncl_loss": [], "ncl_sym": [], "ncl_neg": [],
                                                "dnp_epoch_s": [], "ncl_epoch_s": [], "ncl_extractor_trained": []}

    # --- shared pieces ---------------------------------------------------------------------
    def set_extractor_trainable(self, trainable: bool) -> None:
        for p in self.F.model.parameters():
            p.requires_grad_(trainable)

    def dis_criterion(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Stage I's L_dis, eq. 2: the focal loss (gamma ``focal_gamma`` = 2, no alpha, as DRAEM's
        code). ``neg_loss`` never changes it: Table 6 varies L_neg only."""
        return focal_loss(logits, masks, gamma=self.cfg.focal_gamma)

    def neg_criterion(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Stage II's L_neg criterion: focal loss as eq. 2 (``neg_loss=focal``) or cross-entropy
        (``neg_loss=ce``, Table 6's CE rows; = the focal loss with gamma 0)."""
        gamma = self.cfg.focal_gamma if self.cfg.neg_loss == "focal" else 0.0
        return focal_loss(logits, masks, gamma=gamma)

    def discriminate(self, feats: Sequence[torch.Tensor], size) -> torch.Tensor:
        return self.D([feats[i] for i in self.pick_dnp], size)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """D's anomaly probability [B, H, W] for images in [0, 1] (diagnostics and tests)."""
        self.D.eval()
        with self.autocast():
            logits = self.discriminate(self.F(images.to(self.device)), images.shape[-2:])
        return full(logits).softmax(dim=1)[:, 1]

    def _stream(self, phase, epochs: int, images: torch.Tensor, stream: str, *, anomalies: bool,
                with_normals: bool) -> BatchStream:
        """The stage's batches from where ``phase`` stands, made by the job's workers: at most
        ``steps_per_epoch`` per epoch, a last batch of one image dropped (batch-norm in D and C
        needs two samples). Without anomalies a batch is only an index into the images and is
        gathered in this process."""
        plan = phase.plan(epochs, len(images), int(self.cfg.batch_size), min_batch=2,
                          max_steps=self.cfg.steps_per_epoch)
        if not anomalies:
            return BatchStream(plan, gather(images), self.inputs.in_process())
        return BatchStream(plan, SyntheticBatches(images, self.G, self.seed, stream, with_normals), self.inputs)

    def anomalies(self, x: torch.Tensor, stream: str = "tocoad/dnp", epoch: int = 0,
                  idx: Optional[Sequence[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """G's synthetic batch of ``x`` (CPU images, uint8 or float) as the training loop draws
        it for images ``idx`` (default 0..B-1) of ``epoch`` of ``stream`` (tests, diagnostics)."""
        return synthesize(self.G, as_float(x), self.seed, stream, epoch, range(len(x)) if idx is None else idx)

    # --- stage I: discriminative network pre-training ---------------------------------------
    def dnp_loss(self, syn: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """L_dis (eq. 2) of one synthetic batch (G's images of eq. 1 and their masks, on the
        device): the frozen F describes them, D segments them."""
        with self.autocast():
            with torch.no_grad():
                feats = self.F(syn)
            logits = self.discriminate(feats, syn.shape[-2:])
        return self.dis_criterion(full(logits), masks)

    def fit_dnp(self, images: Optional[torch.Tensor], epochs: Optional[int] = None) -> None:
        """Train D on synthetic anomalies with F frozen. ``images``: uint8/float [N, 3, H, W]
        (None when the stage finished in an earlier attempt)."""
        cfg = self.cfg
        epochs = cfg.dnp_epochs if epochs is None else epochs
        if self.checkpoints.finished("dnp"):
            phase = self.checkpoints.phase("dnp", modules={"D": self.D})
        else:
            self.set_extractor_trainable(False)
            opt = torch.optim.Adam(self.D.parameters(), lr=cfg.dnp_lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m) for m in cfg.dnp_milestones], cfg.dnp_gamma)
            self.D.train()
            phase = self.checkpoints.phase("dnp", modules={"D": self.D}, optimizers={"adam": opt},
                                           schedulers={"lr": sched})
            seconds = phase.extra_state.setdefault("epoch_s", [])
            stream = self._stream(phase, epochs, images, "tocoad/dnp", anomalies=True, with_normals=False)
            for epoch in tqdm(phase.epochs(epochs), total=epochs, initial=phase.epoch, desc="ToCoAD stage I (DNP)",
                              disable=not self.progress):
                t0 = time.perf_counter()
                for batch in stream.epoch(epoch):
                    syn, masks = to_device(batch, self.device)
                    loss = self.dnp_loss(syn, masks)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    phase.step_done(loss, len(syn))
                sched.step()
                phase.epoch_done()
                seconds.append(time.perf_counter() - t0)
            stream.close()
            opt.zero_grad(set_to_none=True)
            phase.finish()
            self.checkpoints.save()  # the stage boundary: a kill in stage II does not redo stage I
        self.history["dnp_loss"] = list(phase.history)
        self.history["dnp_epoch_s"] = list(phase.extra_state.get("epoch_s", []))
        self.D.eval()

    # --- stage II: negative-guided contrastive learning -------------------------------------
    def ncl_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.F.model.parameters()) + [p for p in self.C.parameters() if p.requires_grad]

    def make_views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The M = ``ncl_views`` SimSiam views of a batch (eq. 5's v^1 .. v^M), from ``view_gen``."""
        if self.views is None:
            self.views = SimSiamViews(tuple(x.shape[-2:]))
        return [self.views(x, self.view_gen) for _ in range(int(self.cfg.ncl_views))]

    def sym_loss(self, x: torch.Tensor) -> torch.Tensor:
        """L_sym (eq. 5, M = ``ncl_views``) of a batch of normal images ``x`` (float, on the device)."""
        views = self.make_views(x)
        b, m = x.shape[0], len(views)
        # F keeps its batch-norm in eval mode, so one forward of all views equals M forwards.
        with self.autocast():
            feats = self.F(torch.cat(views))
            per_view = [[feats[i][v * b : (v + 1) * b] for i in self.pick_cl] for v in range(m)]
            targets = None
            if self.F_target is not None:
                with torch.no_grad():
                    tf = self.F_target(torch.cat(views))
                targets = [[tf[i][v * b : (v + 1) * b] for i in self.pick_cl] for v in range(m)]
            loss = self.C.loss(per_view, targets)
        return full(loss)

    def neg_loss(self, syn: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """L_neg: the frozen D's loss (``neg_criterion``) on a synthetic batch (G's images of
        the step's normal images and their masks, on the device) seen through the current F."""
        with self.autocast():
            logits = self.discriminate(self.F(syn), syn.shape[-2:])
        return self.neg_criterion(full(logits), masks)

    def fit_ncl(self, images: torch.Tensor, epochs: Optional[int] = None, lam: Optional[float] = None) -> None:
        """Fine-tune F jointly with C under the frozen D's guidance (eq. 6). ``lam`` defaults
        to the config's lambda; ``lam=1`` is NCL without D (L_sym only).

        D: ``requires_grad=False`` and eval mode, so neither its weights nor its batch-norm
        statistics move; gradients still flow *through* it into F. F's batch-norm layers stay
        in eval mode (ImageNet statistics; their affine parameters train): with batch 16 and
        three differently distributed groups per step (two views, synthetic anomalies) batch
        statistics would be noisy, and the memory bank must see the same normalisation as
        training did. The paper does not say; this is our choice.

        ``freeze_epochs`` (seed 000): during the first N epochs F's weights do not move, while
        C (projectors, predictors) trains on L_sym as usual; L_neg, which only F could lower
        (D is frozen), is then computed for the log without a backward pass. The optimiser and
        the cosine schedule span all epochs, frozen ones included.
        """
        cfg = self.cfg
        epochs = cfg.ncl_epochs if epochs is None else epochs
        lam = float(cfg.lam if lam is None else lam)
        if lam < 1.0 and self.D is None:
            raise ValueError("L_neg needs the discriminative network D (stages=both)")
        if self.D is not None:
            for p in self.D.parameters():
                p.requires_grad_(False)
            self.D.eval()
        if cfg.contrastive == "byol" and self.F_target is None:
            import copy

            self.F_target = copy.deepcopy(self.F).eval()
            for p in self.F_target.parameters():
                p.requires_grad_(False)
        modules = {"F": self.F, "C": self.C}
        if self.F_target is not None:
            modules["F_target"] = self.F_target
        generators = {"views": self.view_gen}
        if self.checkpoints.finished("ncl"):
            phase = self.checkpoints.phase("ncl", modules=modules, generators=generators)
        else:
            params = self.ncl_parameters()
            opt = torch.optim.SGD(params, lr=cfg.ncl_lr, momentum=cfg.ncl_momentum, weight_decay=cfg.ncl_weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
            phase = self.checkpoints.phase("ncl", modules=modules, optimizers={"sgd": opt}, schedulers={"cosine": sched},
                                           generators=generators)
            self._run_ncl(phase, images, epochs, lam, opt, sched)
            opt.zero_grad(set_to_none=True)
            phase.finish()
            self.checkpoints.save()  # the stage boundary: a kill while the bank is built keeps stage II
        extra = phase.extra_state
        self.history["ncl_loss"] = list(phase.history)
        for key in ("ncl_sym", "ncl_neg", "ncl_epoch_s", "ncl_extractor_trained"):
            self.history[key] = list(extra.get(key, []))
        self.set_extractor_trainable(False)
        self.C.eval()
        self.F.eval()

    def _run_ncl(self, phase, images: torch.Tensor, epochs: int, lam: float, opt, sched) -> None:
        """Stage II's epochs (``fit_ncl``); per-epoch means of L_sym and L_neg go to the phase's
        extra state, accumulated on the device within an epoch (read once per epoch)."""
        cfg = self.cfg
        extra = phase.extra_state
        for key in ("ncl_sym", "ncl_neg", "ncl_epoch_s", "ncl_extractor_trained"):
            extra.setdefault(key, [])
        with_neg = lam < 1.0
        stream = self._stream(phase, epochs, images, "tocoad/ncl", anomalies=with_neg, with_normals=True)
        for epoch in tqdm(phase.epochs(epochs), total=epochs, initial=phase.epoch, desc="ToCoAD stage II (NCL)",
                          disable=not self.progress):
            train_f = epoch >= cfg.freeze_epochs  # seed 000: F frozen for the first freeze_epochs
            self.set_extractor_trainable(train_f)
            self.C.train()
            self.F.eval()
            t0 = time.perf_counter()
            for batch in stream.epoch(epoch):
                batch = to_device(batch, self.device)
                x = as_float(batch[0])
                # eq. 6, back-propagated term by term (gradients add up to those of the sum;
                # peak memory holds one group's activations instead of three)
                opt.zero_grad(set_to_none=True)
                l_sym = self.sym_loss(x)
                (lam * l_sym).backward()
                if with_neg:
                    with torch.set_grad_enabled(train_f):
                        l_neg = self.neg_loss(batch[1], batch[2])
                    if train_f:
                        ((1.0 - lam) * l_neg).backward()
                else:
                    l_neg = torch.zeros((), device=l_sym.device)
                loss = lam * l_sym.detach() + (1.0 - lam) * l_neg.detach()
                opt.step()
                if self.F_target is not None:
                    ema_update(self.F_target, self.F, cfg.byol_ema)
                    self.C.update_target()
                sums = extra.get("epoch_sums")
                parts = torch.stack([l_sym.detach().float(), l_neg.detach().float()])
                extra["epoch_sums"] = parts if sums is None else sums + parts
                extra["epoch_steps"] = int(extra.get("epoch_steps", 0)) + 1
                phase.step_done(loss, 1)
            sched.step()
            phase.epoch_done()
            sums, steps = extra.pop("epoch_sums", None), int(extra.pop("epoch_steps", 0))
            means = (sums / max(steps, 1)).tolist() if sums is not None else [float("nan")] * 2
            extra["ncl_sym"].append(means[0])
            extra["ncl_neg"].append(means[1])
            extra["ncl_epoch_s"].append(time.perf_counter() - t0)
            extra["ncl_extractor_trained"].append(float(train_f))
        stream.close()

    @torch.no_grad()
    def projector_spread(self, images: torch.Tensor, augment: bool = True) -> list[float]:
        """Per head: mean over dimensions of the std of l2-normalised projector outputs
        (SimSiam's collapse diagnostic, its Fig. 2: ~1/sqrt(d) when healthy, 0 when collapsed),
        measured on SimSiam views of ``images`` (what C is trained on) with C in eval mode. The
        views come from a generator of their own, so the diagnostic leaves training untouched."""
        self.C.eval()
        x = as_float(images).to(self.device)
        if augment:
            x = SimSiamViews(tuple(x.shape[-2:]))(x, torch.Generator().manual_seed(0))
        with self.autocast():
            feats = self.F(x)
            zs = full(self.C.project([feats[i] for i in self.pick_cl]))
        return [float(F.normalize(z, dim=1).std(dim=0).mean()) for z in zs]
