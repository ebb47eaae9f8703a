"""Perlin noise and DRAEM-style Perlin anomaly masks.

DRAEM (Zavrtanik et al., ICCV 2021) shapes its synthetic anomalies with thresholded 2D Perlin
noise: a lattice of random unit gradients, dot products with the offsets to the four lattice
corners, blended with the quintic fade ``6t^5 - 15t^4 + 10t^3`` and scaled by sqrt(2). The
lattice resolution is drawn per axis as ``2**k``; the official code draws
``k = torch.randint(0, 6)``, i.e. 2**0 .. 2**5 (``randint``'s upper bound is exclusive), rotates
the noise by a random angle in (-90, 90) degrees (imgaug ``Affine``, zero fill) and keeps
``noise > 0.5``. ``perlin_mask`` does the same; the exponent range and threshold are arguments.

This implementation evaluates the noise at any (H, W) directly (no "shape divisible by
resolution" restriction of the reference code) and draws all randomness from an explicit
generator, so masks are reproducible without touching global RNG state.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

Generator = Union[np.random.Generator, torch.Generator, int, None]


def numpy_rng(generator: Generator) -> np.random.Generator:
    """A NumPy generator from a NumPy generator (returned as is), a torch generator (a seed is
    drawn from it, advancing it deterministically) or an int seed."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return np.random.default_rng(seed)
    if isinstance(generator, (int, np.integer)):
        return np.random.default_rng(int(generator))
    raise TypeError(
        "synthetic anomalies need an explicit random generator (numpy.random.Generator, "
        f"torch.Generator or int seed), got {type(generator).__name__}"
    )


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], generator: Generator) -> np.ndarray:
    """2D Perlin noise [H, W] (float32, roughly in [-1, 1]) with ``res`` lattice cells per axis."""
    rng = numpy_rng(generator)
    height, width = int(shape[0]), int(shape[1])
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = 2.0 * math.pi * rng.random((ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [ry+1, rx+1, 2] (y, x)
    ys = np.arange(height) * (ry / height)
    xs = np.arange(width) * (rx / width)
    iy, ix = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - iy)[:, None], (xs - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[(iy + dy)[:, None], (ix + dx)[None, :]]  # [H, W, 2]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return (math.sqrt(2.0) * (top * (1 - ty) + bottom * ty)).astype(np.float32)


def fractal_noise(shape: tuple[int, int], res: tuple[int, int], generator: Generator, octaves: int = 4, persistence: float = 0.5) -> np.ndarray:
    """Sum of Perlin octaves (frequency x2, amplitude x persistence per octave)."""
    rng = numpy_rng(generator)
    out = np.zeros(shape, dtype=np.float32)
    amplitude, total = 1.0, 0.0
    for octave in range(octaves):
        factor = 2**octave
        out += amplitude * perlin_noise(shape, (res[0] * factor, res[1] * factor), rng)
        total += amplitude
        amplitude *= persistence
    return out / total


def rotate_array(arr: np.ndarray, angle: float, fill: float = 0.0) -> np.ndarray:
    """Rotate a 2D array about its centre (bilinear, constant ``fill`` outside)."""
    import cv2

    h, w = arr.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)
    return cv2.warpAffine(arr.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))


def perlin_mask(
    shape: tuple[int, int],
    generator: Generator,
    scale_exponents: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    rotation: Optional[tuple[float, float]] = (-90.0, 90.0),
    nonempty: bool = False,
    max_tries: int = 50,
) -> torch.Tensor:
    """Boolean [H, W] mask: thresholded, randomly rotated Perlin noise (DRAEM's recipe).

    scale_exponents: ``k`` is drawn per axis from ``range(*scale_exponents)`` (exclusive upper
        bound, as DRAEM's ``torch.randint(0, 6)``), resolution ``2**k``.
    nonempty: redraw (up to ``max_tries``) until at least one pixel is set. DRAEM itself keeps
        empty masks (such samples are then labelled normal), so the default is False.
    """
    rng = numpy_rng(generator)
    lo, hi = int(scale_exponents[0]), int(scale_exponents[1])
    mask = np.zeros(shape, dtype=bool)
    for _ in range(max_tries if nonempty else 1):
        ky, kx = rng.integers(lo, hi), rng.integers(lo, hi)
        noise = perlin_noise(shape, (2**ky, 2**kx), rng)
        if rotation is not None:
            noise = rotate_array(noise, rng.uniform(*rotation))
        mask = noise > threshold
        if mask.any() or not nonempty:
            break
    return torch.from_numpy(mask)
