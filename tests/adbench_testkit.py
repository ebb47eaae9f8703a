"""Tiny methods and a tiny dataset for the runner / CLI tests (``--plugin adbench_testkit``).

Nothing here depends on the real methods or datasets, so the harness is tested on its own,
fast, on images generated into ``tmp_path`` (``make_kit_data``).

``kit_mean`` is a real (if naive) detector: per-pixel squared distance to the mean training
image. Environment variables make it misbehave on purpose, on one named category, so tests can
hit failure paths at a deterministic point instead of guessing timings:

* ``ADBENCH_KIT_KILL_ON=<cat>``: fit SIGKILLs its whole process group (a ``kill -9`` of the run)
* ``ADBENCH_KIT_DIE_ON=<cat>``: fit SIGKILLs only its own process (what the OOM killer does)
* ``ADBENCH_KIT_FAIL_ON=<cat>``: fit raises
* ``ADBENCH_KIT_INT_ON=<cat>``: fit sends SIGINT to its process group (Ctrl-C)
* ``ADBENCH_KIT_HANG_ON=<cat>``: fit writes its pid to ``$ADBENCH_KIT_PIDFILE`` and sleeps
* ``ADBENCH_KIT_TERM_ON=<cat>``: fit sends SIGTERM to its process group (a scheduler's kill)
* ``ADBENCH_KIT_SLEEP_S=<seconds>``: fit sleeps that long (two runs sharing one grid)
* ``ADBENCH_KIT_BAD_EXTRAS_ON=<cat>``: record_extras returns a value that cannot be pickled
* ``ADBENCH_KIT_FILL_DISK=<cat>:<file>``: fit writes ``<file>`` until its disk is full
* ``ADBENCH_KIT_NAN_ON=<cat>``: predict returns NaN scores
* ``ADBENCH_KIT_BADSHAPE_ON=<cat>``: predict returns maps of the wrong size

Generated categories for the method tests live here too (``disk_category``, ``as_batches``,
``stripe_image``, ``stripes_with_blobs``): plain functions, importable by any test module,
so that tests of different methods that need the same kind of data build it one way.
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from adbench.config import MethodConfig
from adbench.data import Batch, Sample
from adbench.dataset import CategoryIndex, CategoryInfo, DatasetAdapter, list_images
from adbench.detector import Detector, Prediction
from adbench.registry import register_dataset, register_method


#: each neural method's quick profile, shrunk to a step or two on 64-px images (precision and
#: k-shot tests run every method with these)
TINY_CONFIGS = {
    "draem": {"image_size": 64, "epochs": 1, "max_steps": 1},
    "autoencoder": {"image_size": 64, "epochs": 1, "max_steps": 1},
    "reverse_distillation": {"image_size": 64, "epochs": 1},
    "fastflow": {"image_size": 64, "epochs": 1},
    "uniad": {"image_size": 128, "epochs": 1},  # an 8x8 grid: the 7x7 neighbour mask needs room
    "cutpaste": {"image_size": 64, "epochs": 1, "steps_per_epoch": 1},
    "cutpaste_patch": {"image_size": 64, "patch_size": 32, "test_stride": 16, "epochs": 1, "steps_per_epoch": 1},
    "tocoad": {"image_size": 64, "crop_size": None, "dnp_epochs": 1, "ncl_epochs": 1, "steps_per_epoch": 1},
    "patchcore": {"image_size": 64, "crop_size": None},
    "feature_gaussian": {"image_size": 64, "crop_size": None},
    # a 4x4 patch grid of the ViT-S/14 register encoder, one iteration
    "dinomaly": {"image_size": 56, "crop_size": None, "batch_size": 2, "iterations": 1, "warmup_iterations": 0},
}


def _triggered(var: str, categories) -> bool:
    targets = {t.strip() for t in os.environ.get(var, "").split(",") if t.strip()}  # one or a comma list
    return bool(targets & set(categories))


@dataclass
class KitConfig(MethodConfig):
    image_size: int = 32
    batch_size: int = 4
    scale: float = 1.0
    mode: str = "mean"  # "noisy": the mean gets seeded random jitter (tests seeding)


@register_method("kit_mean")
class KitMean(Detector):
    """Squared distance to the mean training image; image score = map max."""

    Config = KitConfig
    PROFILES = {"paper": {}, "quick": {"image_size": 24}}
    produces_maps = True
    protocols = ("single", "unified")

    def fit(self, train_loader) -> None:
        total, n, cats = None, 0, set()
        for batch in train_loader:
            assert batch.masks is None
            cats.update(batch.categories)
            s = batch.images.sum(0)
            total = s if total is None else total + s
            n += len(batch)
        self.trained_on = sorted(cats)
        if _triggered("ADBENCH_KIT_KILL_ON", cats):
            os.killpg(os.getpgid(0), signal.SIGKILL)
        if _triggered("ADBENCH_KIT_DIE_ON", cats):
            os.kill(os.getpid(), signal.SIGKILL)
        if _triggered("ADBENCH_KIT_FAIL_ON", cats):
            raise RuntimeError("deliberate failure in fit")
        if _triggered("ADBENCH_KIT_HANG_ON", cats):  # announce our pid, then train "forever"
            with open(os.environ["ADBENCH_KIT_PIDFILE"], "a") as pidfile:  # a line per hanging job
                pidfile.write(f"{os.getpid()}\n")
            time.sleep(120)
        if _triggered("ADBENCH_KIT_TERM_ON", cats):  # what `kill -TERM -<pgid>` does
            os.killpg(os.getpgid(0), signal.SIGTERM)
            time.sleep(30)
        if os.environ.get("ADBENCH_KIT_SLEEP_S"):
            time.sleep(float(os.environ["ADBENCH_KIT_SLEEP_S"]))
        fill = os.environ.get("ADBENCH_KIT_FILL_DISK", "")
        if fill and fill.split(":", 1)[0] in cats:
            _fill_disk(fill.split(":", 1)[1])
        if _triggered("ADBENCH_KIT_INT_ON", cats):  # what Ctrl-C does: SIGINT to the group
            os.killpg(os.getpgid(0), signal.SIGINT)
            time.sleep(30)
        self.mean = (total / n).to(self.device)
        if self.config.mode == "noisy":  # depends on all three RNGs the runner seeds
            jitter = torch.rand_like(self.mean) * float(np.random.rand() + random.random())
            self.mean = self.mean + 0.3 * jitter
        self.extra = torch.nn.Linear(3, 2)  # parameters for the record's count: 8

    def predict(self, batch) -> Prediction:
        maps = ((batch.images - self.mean) ** 2).mean(1) * self.config.scale
        scores = maps.flatten(1).amax(1)
        if _triggered("ADBENCH_KIT_NAN_ON", batch.categories):
            scores = scores * float("nan")
        if _triggered("ADBENCH_KIT_BADSHAPE_ON", batch.categories):
            maps = maps[:, ::2, ::2]
        return Prediction(scores=scores, maps=maps)

    def record_extras(self):
        if _triggered("ADBENCH_KIT_BAD_EXTRAS_ON", self.trained_on):
            return {"trained_on": self.trained_on, "callback": lambda: None}
        return {"trained_on": self.trained_on}


def _fill_disk(path: str) -> None:
    """Write zeros to ``path`` until the disk refuses (ENOSPC); the file stays."""
    block = b"\0" * (1 << 16)
    try:
        with open(path, "ab") as fh:
            while True:
                fh.write(block)
                fh.flush()
    except OSError:
        pass


@dataclass
class KitScoreConfig(KitConfig):
    reduce: Literal["max", "mean"] = "max"


@register_method("kit_scoreonly")
class KitScoreOnly(KitMean):
    """Same model, image scores only (no maps): pixel metrics must be reported undefined."""

    Config = KitScoreConfig
    produces_maps = False
    protocols = ("single",)

    def predict(self, batch) -> Prediction:
        maps = super().predict(batch).maps
        scores = maps.flatten(1).amax(1) if self.config.reduce == "max" else maps.flatten(1).mean(1)
        return Prediction(scores=scores, maps=None)


@register_dataset("kitgen")
class KitGen(DatasetAdapter):
    """MVTec layout; categories whose name starts with ``tex`` are textures."""

    def categories(self):
        return sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())

    def category_info(self, category):
        return CategoryInfo(category, "texture" if category.startswith("tex") else "object")

    def index(self, category):
        root = self.root / category
        train = [Sample(p, 0, category, "train") for p in list_images(root / "train" / "good")]
        test = []
        for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
            for p in list_images(folder):
                if folder.name == "good":
                    test.append(Sample(p, 0, category, "test"))
                else:
                    mask = root / "ground_truth" / folder.name / f"{p.stem}_mask.png"
                    test.append(Sample(p, 1, category, "test", folder.name, mask))
        return CategoryIndex(CategoryInfo(category), train, test)


def make_kit_data(root, categories=("tex_a", "obj_b"), n_train=6, n_good=3, n_bad=3, size=32,
                  seed=0, no_anomalies=()) -> Path:
    """Write a tiny MVTec-layout set: smooth normal images, anomalies = a bright square."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for ci, cat in enumerate(categories):
        base = rng.uniform(0.3, 0.6, size=(3,))

        def normal():
            noise = rng.normal(0, 0.03, size=(size, size, 3))
            return np.clip(base + noise, 0, 1)

        def save(arr, path):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((arr * 255).astype(np.uint8)).save(path)

        for i in range(n_train):
            save(normal(), root / cat / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            save(normal(), root / cat / "test" / "good" / f"{i:03d}.png")
        if cat in no_anomalies:
            continue
        for i in range(n_bad):
            img = normal()
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(2, size - 10, size=2)
            mask[y : y + 8, x : x + 8] = True
            img[mask] = 1.0
            save(img, root / cat / "test" / "square" / f"{i:03d}.png")
            m = root / cat / "ground_truth" / "square" / f"{i:03d}_mask.png"
            m.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(m)
    return root


@dataclass
class KitTrainedConfig(KitConfig):
    epochs: int = 3
    lr: float = 0.05


@register_method("kit_trained")
class KitTrained(KitMean):
    """A tiny trained model (a per-pixel linear map fitted by SGD to reconstruct normal images),
    its loop run through the job's checkpoints (``adbench.training``), so runner tests can kill,
    retry and resume a real training loop.

    ``ADBENCH_KIT_DIE_AT_STEP=<n>:<marker file>``: the first attempt (no marker yet) writes the
    marker and exits the process hard right after optimiser step ``n`` (a node lost, a
    pre-emption); a retry finds the marker and trains on."""

    Config = KitTrainedConfig
    PROFILES = {"paper": {}, "quick": {}}
    protocols = ("single",)

    def fit(self, train_loader) -> None:
        images = torch.cat([b.images for b in train_loader])
        self.trained_on = sorted({c for b in train_loader for c in b.categories})
        self.net = torch.nn.Conv2d(3, 3, 1)
        opt = torch.optim.SGD(self.net.parameters(), lr=self.config.lr)
        phase = self.context.checkpoints.phase("train", modules={"net": self.net}, optimizers={"sgd": opt})
        die = os.environ.get("ADBENCH_KIT_DIE_AT_STEP", "")
        die_at, marker = (int(die.split(":", 1)[0]), Path(die.split(":", 1)[1])) if die else (None, None)
        for epoch in phase.epochs(self.config.epochs):
            for idx in phase.batches(epoch, len(images), 2):
                x = images[idx]
                loss = ((self.net(x) - x) ** 2).mean() + 0.01 * torch.rand(()).item()
                opt.zero_grad()
                loss.backward()
                opt.step()
                phase.step_done(loss, len(idx))
                if die_at is not None and phase.total_steps == die_at and not marker.exists():
                    marker.write_text("died once")
                    self.context.checkpoints.save()
                    os._exit(3)
            phase.epoch_done()
        phase.finish()
        self.context.checkpoints.training_done()
        self.loss_history = list(phase.history)
        with torch.no_grad():
            self.mean = self.net(images).mean(0)
        self.extra = torch.nn.Linear(3, 2)

    def record_extras(self):
        return {"trained_on": self.trained_on, "loss_history": self.loss_history}


# ----------------------------------------------------------------------------- method test data
def disk_category(normal, n_train: int, n_test: int, *, size: int, seed: int, radius: tuple[float, float],
                  margin: int):
    """Train images ``normal(g, size)``; test images alternate normal / anomalous, an anomaly
    being a disk of random colour (radius ``radius[0] + radius[1] * U[0, 1)``, centre at least
    ``margin`` px from the border). Every draw comes from one generator seeded with ``seed``.
    Returns (train [N,3,S,S], test [M,3,S,S], labels [M], masks [M,S,S]).

    Why shared: the autoencoder and DRAEM tests (and the training-resume tests through them)
    generate their categories this way and differ only in the normal texture, the image size
    and the disks' radius and margin."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    train = torch.stack([normal(g, size) for _ in range(n_train)])
    test, labels, masks = [], [], []
    for i in range(n_test):
        img, mask = normal(g, size), torch.zeros(size, size, dtype=torch.bool)
        if i % 2:
            r = radius[0] + radius[1] * torch.rand(1, generator=g).item()
            cy, cx = (margin + (size - 2 * margin) * torch.rand(2, generator=g)).tolist()
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img = torch.where(mask[None], torch.rand(3, 1, 1, generator=g), img)
        test.append(img), labels.append(i % 2), masks.append(mask)
    return train, torch.stack(test), torch.tensor(labels), torch.stack(masks)


def as_batches(images: torch.Tensor, batch_size: int = 8) -> list[Batch]:
    """Normal-labelled batches of ``images`` (category ``stripes``): a training loader, or the
    test images in one batch, for the autoencoder and DRAEM tests."""
    out = []
    for i in range(0, len(images), batch_size):
        part = images[i : i + batch_size]
        out.append(Batch(images=part, labels=torch.zeros(len(part), dtype=torch.long), paths=[""] * len(part),
                         categories=["stripes"] * len(part), defect_types=["good"] * len(part)))
    return out


def stripe_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Normal image of the CutPaste tests: sinusoidal stripes of random orientation, phase and
    colour, float32 [3, S, S]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 5)
    v = 0.5 + 0.4 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
    colour = rng.uniform(0.4, 1.0, 3)
    return np.stack([v * c for c in colour]).astype(np.float32)


def _blob(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly: a dark or bright blob pasted on ``img``; returns (image, mask)."""
    size = img.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    r = rng.uniform(0.08, 0.15) * size
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    out = img.copy()
    out[:, mask] = rng.choice([0.02, 0.98])
    return out, mask


def stripes_with_blobs(rng: np.random.Generator, n_train: int, n_test: int, size: int = 64):
    """``n_train`` striped images, then ``n_test`` test images of which every odd one has a blob,
    all drawn from ``rng`` in that order; returns (train, test, labels, masks) as lists. Why
    shared: the CutPaste image- and patch-level tests detect on this same category."""
    train = [stripe_image(rng, size) for _ in range(n_train)]
    test, labels, masks = [], [], []
    for i in range(n_test):
        img, mask = stripe_image(rng, size), np.zeros((size, size), bool)
        if i % 2:
            img, mask = _blob(img, rng)
        test.append(img), labels.append(i % 2), masks.append(mask)
    return train, test, labels, masks
