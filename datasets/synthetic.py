"""A built-in synthetic anomaly set: generated on first use, so the demo and tests need no data.

Why it exists: ``adbench run --method all --dataset synthetic --profile quick`` must work on a
fresh machine, and tests need a set on which a bad method visibly loses to a good one.

What it is (version 2, fixed seed, so every machine gets byte-identical files):

* three categories, MVTec layout (``<cat>/{train/good, test/<defect>, ground_truth/<defect>/
  <stem>_mask.png}``), read by the same walker as MVTec AD:

  ======== ======= ======= ====================================================
  name     kind    aligned defects
  ======== ======= ======= ====================================================
  fabric   texture         hole (missing material), stain, pulled thread
  chip     object  yes     missing_pin (missing part), scratch, contamination
  washer   object  no      crack, missing_part (bite out of the rim), stain
  ======== ======= ======= ====================================================

* 256x256 RGB PNGs; per category 40 training images, 30 test images (12 good, 6 per defect).
  256 px is the largest input any ``quick`` profile uses, so no method upsamples, and thin
  defects (1-2 px cracks and scratches) still exist after a resize to 224 or 128. 40 training
  images is the smallest count at which per-location statistics (PaDiM-like Gaussians) and
  memory banks are stable; 30 test images give an image AUROC resolution of 1/216. The whole
  set is 210 images and 54 masks (~30 MB: sensor noise does not compress), generated in a few
  seconds (PNG encoding is most of it); every ``quick`` method trains on it in seconds to a
  minute. Three categories, not more: ``--method all`` runs 11 methods on each, and with a
  fourth (version 1 had a stone texture) the demo took 16 minutes on 2 idle cores, over its
  15-minute budget.
* Nuisance variation on every image (normal and defective alike) so that raw pixel distance is
  a poor detector while local features are good: textures are randomly shifted (phase) and
  rotated a few degrees, so their mean image is a blur; every image gets a global brightness
  gain, a colour cast, an illumination gradient and sensor noise; objects move a few pixels;
  the washer is rotated at random (it carries bolt holes, so rotation is visible).
* Masks are exact: a defect is drawn into a copy of the clean image, and the mask is the set
  of pixels the defect changed (before the photometric nuisance, which affects the whole
  image and is not a defect).

Cache: ``$ADBENCH_CACHE/synthetic-v1`` (default ``~/.cache/adbench/synthetic-v1``), or
``<--data-root>/synthetic-v1``. Generation writes into a temporary sibling folder and renames
it into place when complete, so a killed generation never leaves a half set and two processes
generating at once both end with the same complete folder. A killed generation's temporary
folder (~21 MB) is removed by the next run that uses the cache; one that a live process is
still writing is not (``remove_stale_tmp``: the generator holds a lock while it writes).
Bump ``VERSION`` whenever the generator changes: old caches are then simply not used.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from adbench.dataset import CategoryIndex, CategoryInfo
from adbench.errors import DataError
from adbench.files import pid_alive
from adbench.registry import register_dataset

from ._mvtec_layout import MVTecStyleAdapter, walk_category

VERSION = 2
SEED = 20240611
SIZE = 256
N_TRAIN = 40
N_TEST_GOOD = 12
N_PER_DEFECT = 6
MARKER = "SYNTHETIC_SET.json"
CACHE_ENV = "ADBENCH_CACHE"

Image_ = np.ndarray  # float32 [H, W, 3] in [0, 1]


# =============================================================================================
# Drawing helpers (all in float32 RGB, [0, 1])
# =============================================================================================
def _grid():
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return yy, xx


def _value_noise(rng: np.random.Generator, octaves=(4, 8, 16, 32, 64), falloff=0.6) -> np.ndarray:
    """Smooth random field, zero mean, unit std: sum of bicubic-upsampled random grids."""
    import cv2

    field = np.zeros((SIZE, SIZE), np.float32)
    amp = 1.0
    for cells in octaves:
        grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        field += amp * cv2.resize(grid, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        amp *= falloff
    return (field - field.mean()) / (field.std() + 1e-6)


def _blob(rng: np.random.Generator, cy: float, cx: float, radius: float) -> np.ndarray:
    """Irregular filled blob (boolean mask): a circle with a noisy radius."""
    yy, xx = _grid()
    ang = np.arctan2(yy - cy, xx - cx)
    wobble = np.zeros_like(ang)
    for k in (2, 3, 5):
        wobble += rng.uniform(0.05, 0.18) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) < radius * (1 + wobble)


def _polyline_mask(points: np.ndarray, width: int) -> np.ndarray:
    import cv2

    canvas = np.zeros((SIZE, SIZE), np.uint8)
    cv2.polylines(canvas, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], False, 1, int(width))
    return canvas.astype(bool)


def _random_walk(rng: np.random.Generator, start, steps: int, step: float, heading: float, wiggle: float):
    pts = [np.asarray(start, np.float32)]
    for _ in range(steps):
        heading += rng.normal(0, wiggle)
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)], np.float32))
    return np.stack(pts)


def _line(rng: np.random.Generator, center, length: float, angle: Optional[float] = None):
    angle = rng.uniform(0, np.pi) if angle is None else angle
    d = 0.5 * length * np.array([np.cos(angle), np.sin(angle)], np.float32)
    c = np.asarray(center, np.float32)
    return np.stack([c - d, c + d])


def _paint(img: Image_, mask: np.ndarray, colour, alpha: float = 1.0) -> Image_:
    out = img.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out


def _tint(img: Image_, mask: np.ndarray, factor) -> Image_:
    out = img.copy()
    out[mask] = out[mask] * np.asarray(factor, np.float32)
    return out


def _photometric(rng: np.random.Generator, img: Image_, gain=(0.8, 1.2), noise=0.02) -> Image_:
    """Nuisance applied to every image: brightness gain, colour cast, gradient, sensor noise."""
    yy, xx = _grid()
    beta = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - SIZE / 2) * np.cos(beta) + (yy - SIZE / 2) * np.sin(beta)) / SIZE
    light = rng.uniform(*gain) * (1 + rng.uniform(0.0, 0.3) * ramp)
    cast = rng.uniform(0.94, 1.06, size=3).astype(np.float32)
    out = img * light[..., None] * cast + rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(out, 0, 1)


def _warp(img: Image_, angle_deg: float, dx: float, dy: float, border) -> Image_:
    import cv2

    m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), angle_deg, 1.0)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(
        img, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(b) for b in border)
    )


# =============================================================================================
# Categories: each returns (clean, defective) canonical images and applies its own geometry
# =============================================================================================
@dataclass(frozen=True)
class Category:
    info: CategoryInfo
    defects: tuple[str, ...]
    render: Callable[[np.random.Generator, Optional[str]], tuple[Image_, Image_]]
    gain: tuple[float, float] = (0.8, 1.2)


def _fabric(rng, defect):
    """Plain-weave cloth: crossed sinusoidal threads, random phase and a few degrees of twist."""
    yy, xx = _grid()
    theta = np.deg2rad(rng.uniform(-8, 8))
    period = rng.uniform(22.0, 26.0)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi)
    weave = 0.5 + 0.2 * np.sin(u) + 0.2 * np.sin(v) + 0.1 * np.sin(2 * u) * np.sin(2 * v)
    base = np.array([0.30, 0.42, 0.62], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    clean = np.clip(base * (0.55 + 0.9 * weave[..., None]), 0, 1).astype(np.float32)
    clean += 0.02 * _value_noise(rng, (32, 64))[..., None]
    bad = clean
    cy, cx = rng.uniform(40, SIZE - 40, 2)
    if defect == "hole":
        bad = _paint(clean, _blob(rng, cy, cx, rng.uniform(6, 10)), (0.10, 0.10, 0.12))
    elif defect == "stain":
        bad = _tint(clean, _blob(rng, cy, cx, rng.uniform(10, 16)), (1.15, 0.90, 0.65))
    elif defect == "thread":
        pts = _line(rng, (cx, cy), rng.uniform(50, 110), theta + rng.choice([0, np.pi / 2]) + rng.normal(0, 0.1))
        bad = _paint(clean, _polyline_mask(pts, 2), (0.80, 0.80, 0.76), 0.8)
    return clean, bad


_BOARD = (0.12, 0.33, 0.16)


def _chip(rng, defect):
    """An integrated circuit on a board: aligned, moved by a few pixels and < 2 degrees."""
    import cv2

    clean = np.empty((SIZE, SIZE, 3), np.float32)
    clean[:] = _BOARD
    clean *= (1 + 0.05 * _value_noise(rng, (16, 32)))[..., None]
    pins = []
    for side in (-1, 1):
        for k in range(6):
            x0 = 78 + k * 18
            y0 = 128 + side * 44 - (16 if side < 0 else 0)
            pins.append((x0, y0, x0 + 9, y0 + 16))
    for x0, y0, x1, y1 in pins:
        clean[y0:y1, x0:x1] = (0.78, 0.78, 0.80)
    clean[88:168, 70:186] = (0.16, 0.16, 0.17)
    cv2.circle(clean, (84, 102), 5, (0.45, 0.45, 0.47), -1)
    bad = clean.copy()
    if defect == "missing_pin":
        x0, y0, x1, y1 = pins[rng.integers(len(pins))]
        bad[y0:y1, x0:x1] = _BOARD  # the board shows where the pin was
    elif defect == "scratch":
        pts = _line(rng, (rng.uniform(95, 160), rng.uniform(105, 150)), rng.uniform(25, 45))
        bad = _paint(clean, _polyline_mask(pts, 2), (0.70, 0.70, 0.72), 0.9)
    elif defect == "contamination":
        cy, cx = rng.uniform(80, 176), rng.uniform(62, 194)
        bad = _paint(clean, _blob(rng, cy, cx, rng.uniform(6, 11)), (0.75, 0.55, 0.25), 0.9)
    angle, dx, dy = rng.uniform(-2, 2), rng.uniform(-4, 4), rng.uniform(-4, 4)
    return _warp(clean, angle, dx, dy, _BOARD), _warp(bad, angle, dx, dy, _BOARD)


_TABLE = (0.40, 0.40, 0.42)


def _washer(rng, defect):
    """A flange washer with six bolt holes, turned at random: an object that is not aligned."""
    yy, xx = _grid()
    c = SIZE / 2
    r = np.hypot(yy - c, xx - c)
    ang = np.arctan2(yy - c, xx - c)
    clean = np.empty((SIZE, SIZE, 3), np.float32)
    clean[:] = _TABLE
    metal = (r < 92) & (r > 36)
    shade = 0.78 + 0.10 * np.cos(ang - 0.7) + 0.06 * np.cos(r / 6.0)
    clean[metal] = (np.array([0.85, 0.84, 0.80], np.float32) * shade[metal, None])
    for k in range(6):
        a = k * np.pi / 3
        hole = np.hypot(yy - (c + 64 * np.sin(a)), xx - (c + 64 * np.cos(a))) < 8
        clean[hole] = _TABLE
    bad = clean
    a = rng.uniform(0, 2 * np.pi)
    if defect == "crack":
        start = (c + 40 * np.cos(a), c + 40 * np.sin(a))
        pts = _random_walk(rng, start, 9, 5.0, a, 0.35)
        bad = _tint(clean, _polyline_mask(pts, 2) & metal, 0.3)
    elif defect == "missing_part":
        bite = np.hypot(yy - (c + 92 * np.sin(a)), xx - (c + 92 * np.cos(a))) < rng.uniform(12, 18)
        bad = _paint(clean, bite & metal, _TABLE)
    elif defect == "stain":
        rr = rng.uniform(45, 80)
        blob = _blob(rng, c + rr * np.sin(a), c + rr * np.cos(a), rng.uniform(8, 13)) & metal
        bad = _tint(clean, blob, (0.55, 0.42, 0.30))
    angle, dx, dy = rng.uniform(0, 360), rng.uniform(-3, 3), rng.uniform(-3, 3)
    return _warp(clean, angle, dx, dy, _TABLE), _warp(bad, angle, dx, dy, _TABLE)


#: Every category's images are drawn from generators seeded with (SEED, IMAGE_SEED_VERSION, its
#: id here, split, defect, index). Version 2 only dropped version 1's fourth category ("stone",
#: id 2) to keep the all-methods demo within its time budget; the ids and the image seed
#: version are kept, so chip, fabric and washer are byte-identical to version 1.
CATEGORY_IDS = {"chip": 0, "fabric": 1, "washer": 3}
IMAGE_SEED_VERSION = 1

CATEGORIES: dict[str, Category] = {
    "fabric": Category(CategoryInfo("fabric", "texture", False), ("hole", "stain", "thread"), _fabric, (0.7, 1.3)),
    "chip": Category(CategoryInfo("chip", "object", True), ("missing_pin", "scratch", "contamination"), _chip),
    "washer": Category(CategoryInfo("washer", "object", False), ("crack", "missing_part", "stain"), _washer),
}


# =============================================================================================
# Generation into the cache
# =============================================================================================
def _to_png(img: Image_, path: Path) -> None:
    Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)).save(path, compress_level=1)


def generate_category(name: str, out: Path) -> None:
    """Write one category (deterministic: every image has its own seeded generator)."""
    spec = CATEGORIES[name]
    cat_id = CATEGORY_IDS[name]

    def rng_for(split: int, defect: int, i: int) -> np.random.Generator:
        return np.random.default_rng([SEED, IMAGE_SEED_VERSION, cat_id, split, defect, i])

    def sample(rng, defect):
        clean, bad = spec.render(rng, defect)
        changed = np.abs(bad - clean).max(axis=-1) > 1.0 / 255 if defect else None
        return _photometric(rng, bad, gain=spec.gain), changed

    (out / "train" / "good").mkdir(parents=True)
    for i in range(N_TRAIN):
        img, _ = sample(rng_for(0, 0, i), None)
        _to_png(img, out / "train" / "good" / f"{i:03d}.png")
    (out / "test" / "good").mkdir(parents=True)
    for i in range(N_TEST_GOOD):
        img, _ = sample(rng_for(1, 0, i), None)
        _to_png(img, out / "test" / "good" / f"{i:03d}.png")
    for d, defect in enumerate(spec.defects, start=1):
        (out / "test" / defect).mkdir(parents=True)
        (out / "ground_truth" / defect).mkdir(parents=True)
        for i in range(N_PER_DEFECT):
            img, mask = sample(rng_for(1, d, i), defect)
            if not mask.any():
                raise RuntimeError(f"synthetic {name}/{defect}/{i}: defect changed no pixel")
            _to_png(img, out / "test" / defect / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(
                out / "ground_truth" / defect / f"{i:03d}_mask.png"
            )


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "adbench").expanduser()


def ensure_generated(base: Path) -> Path:
    """Return ``base/synthetic-v<VERSION>``, generating it atomically if it is not complete.

    First removes what killed generations left in ``base`` (``remove_stale_tmp``), so a kill
    during generation costs its temporary folder only until the next run.
    """
    target = base / f"synthetic-v{VERSION}"
    removed = remove_stale_tmp(base) if base.is_dir() else []
    folders = [p for p in removed if not p.name.endswith(LOCK_SUFFIX)]
    if folders:
        print(f"note: removed {len(folders)} unfinished synthetic set(s) left in {base} by a killed "
              f"generation", file=sys.stderr)
    if (target / MARKER).is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    with _GenerationFolder(base, target.name) as tmp:
        for name in sorted(CATEGORIES):
            generate_category(name, tmp / name)
        meta = {"version": VERSION, "seed": SEED, "size": SIZE, "categories": sorted(CATEGORIES)}
        (tmp / MARKER).write_text(json.dumps(meta, indent=1))  # written last: "complete"
        if target.exists() and not (target / MARKER).is_file():
            shutil.rmtree(target, ignore_errors=True)  # leftover of an older, broken layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():  # someone else won the race, or a real error
                raise
    return target


# =============================================================================================
# Temporary folders of generations in progress, and of killed ones
# =============================================================================================
#: ``.synthetic-v2.tmp-<host>-<pid>-<random>``; the generating process holds an exclusive
#: ``flock`` on the sibling ``<that name>.lock`` while it writes (the kernel drops it when the
#: process dies, kill -9 included), so a folder whose lock can be taken is a killed one's.
TMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
#: a leftover without lock file (written before locks existed) is removed once this old;
#: a generation takes seconds, so no live one is that old
STALE_AFTER_S = 15 * 60


def _host() -> str:
    import socket

    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


class _GenerationFolder:
    """The temporary sibling a generation writes into, locked while this process lives."""

    def __init__(self, base: Path, target_name: str):
        self.base = base
        self.prefix = f".{target_name}{TMP_MARK}{_host()}-{os.getpid()}-"
        self.path: Optional[Path] = None
        self._lock_fd: Optional[int] = None

    def __enter__(self) -> Path:
        token = os.urandom(4).hex()
        self.path = self.base / (self.prefix + token)
        lock = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self._lock_fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            _try_lock(self._lock_fd)  # a fresh file: ours at once
            self.path.mkdir()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.path

    def __exit__(self, *exc) -> None:
        try:
            if self.path is not None and self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:  # the folder first, then its lock: a lock without folder is harmless
            lock = self.path.with_name(self.path.name + LOCK_SUFFIX) if self.path else None
            if lock is not None:
                try:
                    lock.unlink()
                except OSError:
                    pass
            if self._lock_fd is not None:
                os.close(self._lock_fd)


def _try_lock(fd: int) -> bool:
    """Exclusive, non-blocking; True when taken. Without ``fcntl`` (Windows): never taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _owner(name: str) -> tuple[Optional[str], Optional[int]]:
    """(host, pid) from ``.synthetic-vN.tmp-<host>-<pid>-<token>``; (None, None) if older style."""
    rest = name.split(TMP_MARK, 1)[1]
    parts = rest.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None, None


def _is_stale(folder: Path, now: float) -> bool:
    """Whether no live process is generating into ``folder``."""
    lock = folder.with_name(folder.name + LOCK_SUFFIX)
    if lock.is_file():
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            return False
        try:
            if _try_lock(fd):
                return True  # its owner is gone (the lock is held while it lives)
        finally:
            os.close(fd)  # closing drops our lock again
        if sys.platform != "win32":
            return False  # locked: a live generation
    host, pid = _owner(folder.name)
    if host == _host() and pid is not None:
        return not pid_alive(pid)
    try:
        age = now - folder.stat().st_mtime
    except OSError:
        return False
    return age > STALE_AFTER_S


def remove_stale_tmp(base: Path) -> list[Path]:
    """Remove the temporary folders (and lock files) of killed generations in ``base``.

    A folder another live process is generating into right now is kept: its lock is held
    (or, where locks are unavailable, its pid is alive on this host). Returns what was removed.
    """
    import time

    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".synthetic-v") and TMP_MARK in name):
            continue
        if name.endswith(LOCK_SUFFIX):
            folder = entry.with_name(name[: -len(LOCK_SUFFIX)])
            if not folder.exists() and _lock_free_and_old(entry, now):
                _unlink(entry)
                removed.append(entry)
            continue
        if entry.is_dir() and _is_stale(entry, now):
            shutil.rmtree(entry, ignore_errors=True)
            _unlink(entry.with_name(name + LOCK_SUFFIX))
            if not entry.exists():
                removed.append(entry)
    return removed


def _lock_free_and_old(lock: Path, now: float) -> bool:
    """A lock file whose folder is gone: removable once free and a minute old (a generation
    creates its lock file a moment before its folder)."""
    try:
        if now - lock.stat().st_mtime < 60:
            return False
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


@register_dataset("synthetic")
class Synthetic(MVTecStyleAdapter):
    """Built-in generated set (4 categories); ``--data-root`` only moves its cache."""

    needs_root = False
    KNOWN_CATEGORIES = {name: spec.info for name, spec in CATEGORIES.items()}

    def __init__(self, root: Optional[str | Path] = None):
        if root is not None:
            root = Path(root).expanduser()
            if (root / MARKER).is_file():  # pointed at the set itself
                self._set_dir = root
                super().__init__(root)
                return
        base = Path(root) if root is not None else default_cache_root()
        try:
            self._set_dir = ensure_generated(base)
        except OSError as exc:
            raise DataError(f"{base}: cannot write the synthetic set there ({exc})") from None
        super().__init__(self._set_dir)

    def categories(self) -> list[str]:
        return [c for c in sorted(CATEGORIES) if (self.root / c).is_dir()]

    def index(self, category: str) -> CategoryIndex:
        return walk_category(self.category_root(category), self.category_info(category))
