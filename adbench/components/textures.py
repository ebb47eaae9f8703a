"""Anomaly-source textures: a user folder (DRAEM uses the DTD texture set) or procedural ones.

DRAEM fills its Perlin masks with a texture from an external image set. The DTD set is not
shipped with adbench and cannot be downloaded here, so without a folder we synthesise varied
textures: fractal noise, (warped) stripes, rotated checkerboards, Worley cells, marble veins,
dot grids and plaid, each coloured with a random palette. Records must say which source was
used (``TextureSource.description``): procedural textures are not DTD and numbers obtained
with them are not directly comparable with the paper's.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from adbench.components.perlin import Generator, fractal_noise, numpy_rng
from adbench.errors import DataError

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
    """Where DRAEM-style anomalies take their fill from.

    ``TextureSource(folder)`` samples images (any depth, any format adbench reads) from the
    folder, resized to the requested shape; ``TextureSource(None)`` makes procedural textures.
    ``description`` goes into records: ``dtd:<folder>`` or ``procedural``.
    """

    def __init__(self, folder: Optional[str | Path] = None):
        from adbench.dataset import walk_files

        self.folder = Path(folder).expanduser() if folder else None
        self.files: list[Path] = []
        if self.folder is not None:
            if not self.folder.is_dir():
                raise DataError(f"anomaly_source {self.folder}: folder not found")
            self.files = walk_files(self.folder)  # hidden files (._x.jpg, .DS_Store) are not textures
            if not self.files:
                raise DataError(f"anomaly_source {self.folder}: no image files found in it")

    @property
    def description(self) -> str:
        return f"dtd:{self.folder}" if self.folder is not None else "procedural"

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
