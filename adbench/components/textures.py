"""Anomaly-source textures: a texture image set (DRAEM and ToCoAD paste DTD images) or procedural ones.

DRAEM fills its Perlin masks with a texture from an external image set, the Describable
Textures Dataset (DTD) in the paper; ToCoAD's generator G does the same. The DTD set is not
shipped with adbench: a run gets it with ``--textures DIR`` (or ``$ADBENCH_TEXTURES_DIR``), a
DTD copy in its ``images/<class>/*.jpg`` layout, which the planner checks before any job
(``read_texture_set``: the folder, its images, each one decoded) and binds into the config of
every method that pastes it (``TextureSet.spec``). Without a set, ``quick`` profiles (and an
explicit ``anomaly_source=procedural``) synthesise varied textures: fractal noise, (warped)
stripes, rotated checkerboards, Worley cells, marble veins, dot grids and plaid, each coloured
with a random palette. Records say which source was used (``TextureSource.description`` and
``TextureSource.facts``): procedural textures are not DTD and numbers obtained with them are
not directly comparable with the papers'.

A texture set's identity is its *content*, not its location: ``fingerprint`` is the sha256 of
the sorted relative file names and sizes. The config hash of a method that pastes a set holds
the fingerprint and the number of images instead of the folder (``location_free``), so moving
the same DTD copy changes no job, while a run with another set is not "already done".
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from adbench.components.perlin import Generator, fractal_noise, numpy_rng
from adbench.errors import ConfigError, DataError

KINDS = ("fractal", "stripes", "checker", "cells", "marble", "dots", "plaid")


def _coords(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle, in units of the image's longer side."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    angle = rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    return c * xx + s * yy, -s * xx + c * yy


def _field(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A scalar pattern in [0, 1] of the given kind."""
    h, w = shape
    if kind == "fractal":
        base = int(rng.integers(2, 9))
        f = fractal_noise(shape, (base, base), rng, octaves=int(rng.integers(3, 6)))
    elif kind in ("stripes", "marble"):
        u, _ = _coords(shape, rng)
        freq = rng.uniform(4, 30)
        warp = fractal_noise(shape, (4, 4), rng, octaves=4) * (rng.uniform(0.5, 3.0) if kind == "marble" else rng.uniform(0, 0.6))
        f = np.sin(2 * math.pi * freq * u + 2 * math.pi * warp)
        if kind == "marble":
            f = 1.0 - np.abs(f) ** rng.uniform(0.2, 0.6)
    elif kind == "checker":
        u, v = _coords(shape, rng)
        n = rng.uniform(3, 24)
        f = ((np.floor(u * n) + np.floor(v * n)) % 2).astype(np.float32)
    elif kind == "cells":
        count = int(rng.integers(8, 80))
        pts = rng.random((count, 2)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        pos = np.stack([yy / h, xx / w], axis=-1).reshape(-1, 1, 2)
        d = np.sqrt(((pos - pts[None]) ** 2).sum(-1))  # [H*W, count]
        d = np.partition(d, 1, axis=1)
        f = (d[:, 1] - d[:, 0] if rng.random() < 0.5 else d[:, 0]).reshape(h, w)
    elif kind == "dots":
        u, v = _coords(shape, rng)
        n = rng.uniform(4, 20)
        r = rng.uniform(0.15, 0.45)
        du, dv = (u * n) % 1 - 0.5, (v * n) % 1 - 0.5
        f = (np.sqrt(du**2 + dv**2) < r).astype(np.float32)
    elif kind == "plaid":
        u, v = _coords(shape, rng)
        f = np.sin(2 * math.pi * rng.uniform(3, 20) * u) + np.sin(2 * math.pi * rng.uniform(3, 20) * v)
    else:
        raise ValueError(f"unknown procedural texture kind {kind!r} (known: {', '.join(KINDS)})")
    f = f.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    return (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)


def procedural_texture(shape: tuple[int, int], generator: Generator, kind: Optional[str] = None) -> torch.Tensor:
    """A random procedural texture, float [3, H, W] in [0, 1].

    A pattern of a random ``kind`` (see ``KINDS``) is mapped through a random 2-3 colour palette,
    with a little fractal grain so flat regions are not perfectly uniform.
    """
    rng = numpy_rng(generator)
    h, w = int(shape[0]), int(shape[1])
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    f = _field(kind, (h, w), rng)
    palette = rng.random((int(rng.integers(2, 4)), 3)).astype(np.float32)
    stops = np.linspace(0.0, 1.0, len(palette))
    img = np.stack([np.interp(f, stops, palette[:, c]) for c in range(3)], axis=0)
    grain = fractal_noise((h, w), (16, 16), rng, octaves=2) * rng.uniform(0.0, 0.15)
    img = np.clip(img + grain[None], 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(img)


class TextureSource:
    """Where DRAEM- and ToCoAD-style anomalies take their fill from.

    ``TextureSource(source)``: ``None`` or ``"procedural"`` makes procedural textures; a folder
    samples its images (DTD's ``images/<class>/*`` when it has an ``images`` folder, else every
    image under it, any depth), resized to the requested shape; a ``TextureSet.spec`` (what the
    planner writes into a job's config) samples that folder and first checks that it still
    holds the set the run was planned with (fingerprint and count), so a job never pastes
    another set than its record's identity says (a Ray node with a different copy fails here).
    ``description`` goes into records: ``dtd:<folder>`` or ``procedural``; ``facts`` adds the
    fingerprint and the number of images.
    """

    def __init__(self, source: Optional[str | Path] = None):
        from adbench.dataset import walk_files

        self.folder: Optional[Path] = None
        self.files: list[Path] = []
        self.sha256: Optional[str] = None
        if source is None or str(source) == PROCEDURAL:
            return
        folder, planned = parse_spec(str(source))
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise DataError(f"anomaly_source {self.folder}: folder not found")
        # hidden files (._x.jpg, .DS_Store) are not textures
        self.files = dtd_files(self.folder) if (self.folder / "images").is_dir() else walk_files(self.folder)
        if not self.files:
            raise DataError(f"anomaly_source {self.folder}: no image files found in it")
        self.sha256 = fingerprint(self.folder, self.files)
        if planned is not None and planned != (self.sha256, len(self.files)):
            raise DataError(f"--textures {self.folder}: not the texture set this job was planned with ({len(self.files)} "
                            f"images, sha256 {self.sha256[:16]}; planned: {planned[1]} images, sha256 "
                            f"{planned[0][:16]}): give every job the same copy")

    @property
    def description(self) -> str:
        return f"dtd:{self.folder}" if self.folder is not None else PROCEDURAL

    def facts(self) -> dict[str, Any]:
        """What a record says about the texture set: ``{"source": "dtd", "sha256": ...,
        "images": n}`` (the fingerprint, not the folder), or ``{"source": "procedural"}``."""
        if self.folder is None:
            return {"source": PROCEDURAL}
        return {"source": "dtd", "sha256": self.sha256, "images": len(self.files)}

    def sample(self, shape: tuple[int, int], generator: Generator) -> torch.Tensor:
        """One texture, float [3, H, W] in [0, 1]."""
        rng = numpy_rng(generator)
        h, w = int(shape[0]), int(shape[1])
        if not self.files:
            return procedural_texture((h, w), rng)
        from PIL import Image

        from adbench.data import load_rgb

        img = load_rgb(self.files[int(rng.integers(len(self.files)))]).resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------
# Texture sets (``--textures``): layout, fingerprint, the up-front check, the config binding
# --------------------------------------------------------------------------------------------
#: ``anomaly_source`` value of procedural textures
PROCEDURAL = "procedural"
#: the layout ``--textures`` must have: the DTD archive's
DTD_LAYOUT = "images/<class>/*.jpg"
#: ``TextureSet.spec``: ``<folder>#sha256=<64 hex>;images=<n>``
_SPEC = re.compile(r"^(?P<folder>.+)#sha256=(?P<sha256>[0-9a-f]{64});images=(?P<count>[0-9]+)$")


@dataclass(frozen=True)
class TextureSet:
    """A checked texture set: its folder (absolute), its images and their fingerprint."""

    folder: Path
    files: tuple[Path, ...]
    sha256: str

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def spec(self) -> str:
        """The ``anomaly_source`` value that binds a config to this set: the folder, where the
        job reads the images, plus fingerprint and count, which the config hash keeps in the
        folder's place (``location_free``)."""
        return f"{self.folder}#sha256={self.sha256};images={self.count}"


def parse_spec(value: str) -> tuple[str, Optional[tuple[str, int]]]:
    """``anomaly_source`` -> (folder, (sha256, images) when it is a ``TextureSet.spec``)."""
    match = _SPEC.match(value)
    if match is None:
        return value, None
    return match["folder"], (match["sha256"], int(match["count"]))


def dtd_files(folder: Path) -> list[Path]:
    """The images of a DTD-layout folder, ``images/<class>/<image>`` (any format adbench
    reads; hidden files and folders skipped), sorted."""
    from adbench.dataset import list_folders, list_images

    return [image for cls in list_folders(Path(folder) / "images") for image in list_images(cls)]


def fingerprint(folder: Path, files: Sequence[Path]) -> str:
    """A texture set's identity: sha256 of its sorted ``<name relative to folder> TAB <size in
    bytes>`` lines. The same copy in another folder has the same fingerprint; a file added,
    removed, renamed or changed in size gives another."""
    lines = sorted(f"{Path(f).relative_to(folder).as_posix()}\t{Path(f).stat().st_size}\n" for f in files)
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def read_texture_set(folder: str | Path) -> TextureSet:
    """The planner's check of ``--textures DIR``, before any job: a folder in DTD's layout
    (``images/<class>/*.jpg``) whose every image decodes. A problem is a DataError of one line
    saying what is wrong (the caller adds the option and the methods that need the set)."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise DataError("not a folder" if path.exists() else "folder not found")
    files = dtd_files(path)
    if not files:
        raise DataError(f"no {DTD_LAYOUT} images in it (DTD's layout: one folder per texture class under images/)")
    bad = undecodable(files)
    if bad:
        (first, why), n = bad[0], len(bad)
        head = f"{first.relative_to(path).as_posix()} cannot be decoded" if n == 1 else (
            f"{n} of {len(files)} images cannot be decoded, the first {first.relative_to(path).as_posix()}")
        raise DataError(f"{head} ({why})")
    return TextureSet(path, tuple(files), fingerprint(path, files))


def undecodable(files: Sequence[Path]) -> list[tuple[Path, str]]:
    """(file, why) for each image that cannot be opened and decoded, in ``files``' order.
    JPEGs decode at 1/8 scale (``draft``: every byte is still read, so a truncated file
    fails), on a few threads (PIL releases the GIL while decoding): DTD's 5,640 images take
    seconds."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(_decode_problem, files))
    return [(f, why) for f, why in zip(files, problems) if why is not None]


def _decode_problem(path: Path) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for unreadable files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return text[:160]
    return None


def requested_source(anomaly_source: Optional[str]) -> str:
    """What a config's ``anomaly_source`` asks the planner for: ``"dtd"`` (None, the default:
    the run's texture set, ``--textures``) or ``"procedural"``. A folder written into the
    config (``--set anomaly_source=DIR``, a YAML key) is a ConfigError: textures come in one
    way, ``--textures DIR``, which checks the set before any job and keys jobs by its content."""
    if anomaly_source is None:
        return "dtd"
    if anomaly_source == PROCEDURAL:
        return PROCEDURAL
    folder, _ = parse_spec(str(anomaly_source))
    raise ConfigError(f"anomaly_source={anomaly_source}: give a texture folder with --textures {folder} (or "
                      f"$ADBENCH_TEXTURES_DIR), which checks it before any job; anomaly_source takes only "
                      f"'{PROCEDURAL}'")


def location_free(config: Any) -> Any:
    """``config`` with a bound texture set's folder replaced by ``dtd`` in ``anomaly_source``
    (fingerprint and count kept): what DRAEM's and ToCoAD's config hash is computed from, so
    moving a DTD copy changes no job and another set is another job. Other configs unchanged."""
    value = getattr(config, "anomaly_source", None)
    match = _SPEC.match(value) if isinstance(value, str) else None
    if match is None:
        return config
    return dataclasses.replace(config, anomaly_source=f"dtd#sha256={match['sha256']};images={match['count']}")
