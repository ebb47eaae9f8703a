"""Synthetic anomalies shared by CutPaste, DRAEM, ToCoAD and plugins.

Every generator takes one image (torch float [3, H, W] in [0, 1]) and an explicit random
generator (``numpy.random.Generator``, ``torch.Generator`` or int seed; never global RNG state,
so a run is reproducible), and returns ``(augmented image, mask)``: the image is a new tensor of
the same shape and dtype, the mask a bool [H, W] tensor of the region the generator replaced.
Pixels outside the mask are bit-identical to the input; inside it nearly all pixels change
(a pasted, colour-jittered patch can equal its background by chance, so "the region written" is
the definition, not "the pixels that differ").

Generators (paper parameters as defaults):

* ``perlin_texture_anomaly``: DRAEM's Perlin mask filled with a texture, opacity beta in
  [0, 0.8): ``out = (1 - m) * x + m * ((1 - beta) * texture + beta * x)``.
* ``cutout``: a box filled with grey, the image mean or a random colour (CutPaste fig. 5).
* ``cutpaste``: CutPaste (Li et al., CVPR 2021, appendix A.1, following torchvision's
  RandomErasing): area ratio in (0.02, 0.15) of the image, aspect ratio log-uniform over
  (0.3, 3.3) (i.e. (0.3, 1) U (1, 3.3), each side equally likely), colour jitter 0.1 on the
  patch, cut and paste locations fully inside the image.
* ``cutpaste_scar``: width [2, 16] px, length [10, 25] px, rotation (-45, 45) degrees.
* ``scar_cutout``: the "Scar" baseline of CutPaste table 1 / fig. 2d (a Cutout special case from
  its ref. [16]: a long thin rotated box of one random colour), at CutPaste-Scar's sizes.
* ``confetti``: Confetti noise (FCDD, Liznerski et al., CutPaste's ref. [32] and table 4): smooth
  colour blobs added to the image ("jitters a color of a local patch").
* ``rotate``: a quarter-turn rotation of the whole image (rotation prediction, Gidaris et al.;
  CutPaste table 1 "Rotation"); no mask, the whole image is the transformation.
* ``cutmix``: a box from another image (seed 000's "CutMix" variant).
* ``nsa_patch``: NSA-style (Schlueter et al.) patch from another (or the same) image, randomly
  rescaled, Poisson-blended with OpenCV ``seamlessClone``.
* ``pepper_noise`` / ``color_jitter``: patch transforms of seed 000, usable on any pasted patch
  (``cutpaste(..., patch_transform="pepper")``).
* ``CutPasteSampler``: turns a batch of normal images into the classification batch CutPaste
  trains on (its proxy tasks: 3-way, binary, scar-only, union, and the baselines of its tables 1
  and 4: rotation, cutout, scar_cutout, confetti).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from adbench.components.perlin import Generator, numpy_rng, perlin_mask, perlin_noise  # noqa: F401
from adbench.components.textures import TextureSource, procedural_texture  # noqa: F401


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"synthetic anomalies take a [3, H, W] tensor, got {getattr(image, 'shape', type(image))}")


# --------------------------------------------------------------------------------------------
# Perlin-noise texture blending (DRAEM)
# --------------------------------------------------------------------------------------------
def perlin_texture_anomaly(
    image: torch.Tensor,
    texture: torch.Tensor,
    generator: Generator,
    beta_range: tuple[float, float] = (0.0, 0.8),
    mask: Optional[torch.Tensor] = None,
    nonempty: bool = True,
    **mask_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend ``texture`` into ``image`` inside a Perlin mask with opacity ``beta``.

    ``beta`` ~ U(beta_range) is the weight of the *original* image inside the mask (DRAEM eq. 1).
    ``mask`` may be given (bool [H, W]); otherwise ``perlin_mask`` draws one (non-empty by
    default; pass ``nonempty=False`` for DRAEM's exact behaviour, where an empty mask yields an
    unchanged image labelled normal).
    """
    _check_image(image)
    rng = numpy_rng(generator)
    h, w = image.shape[-2:]
    if texture.shape != image.shape:
        raise ValueError(f"texture shape {tuple(texture.shape)} != image shape {tuple(image.shape)}")
    if mask is None:
        mask = perlin_mask((h, w), rng, nonempty=nonempty, **mask_kwargs)
    mask = mask.to(torch.bool)
    beta = float(rng.uniform(*beta_range))
    blended = (1.0 - beta) * texture.to(image.dtype) + beta * image
    out = torch.where(mask[None], blended, image)
    return out, mask


# --------------------------------------------------------------------------------------------
# Patch transforms (CutPaste appendix A.1; seed 000 section 1.2)
# --------------------------------------------------------------------------------------------
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _hue_shift(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate chroma by ``shift`` turns in YIQ space (a fast stand-in for the HSV round trip)."""
    c, s = np.cos(2 * np.pi * shift), np.sin(2 * np.pi * shift)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float32)
    m = (_YIQ_INV @ rot @ _YIQ).to(x.dtype)
    return torch.einsum("ij,jhw->ihw", m, x)


def color_jitter(patch: torch.Tensor, generator: Generator, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1, hue: float = 0.1) -> torch.Tensor:
    """torchvision ``ColorJitter`` semantics with an explicit generator: brightness, contrast,
    saturation factors ~ U(1 - s, 1 + s), hue shift ~ U(-h, h) turns, in random order, clamped
    to [0, 1] after each step. Brightness/contrast/saturation use torchvision's formulas; the
    hue shift rotates chroma in YIQ space instead of torchvision's HSV round trip (same angle,
    10x cheaper; CutPaste jitters every training image and patch, so this matters on a CPU)."""
    rng = numpy_rng(generator)
    if min(patch.shape[-2:]) == 0:
        return patch
    ops = []
    if brightness > 0:
        f = float(rng.uniform(1 - brightness, 1 + brightness))
        ops.append(lambda x, f=f: x * f)
    if contrast > 0:
        f = float(rng.uniform(1 - contrast, 1 + contrast))
        ops.append(lambda x, f=f: f * x + (1 - f) * _gray(x).mean())
    if saturation > 0:
        f = float(rng.uniform(1 - saturation, 1 + saturation))
        ops.append(lambda x, f=f: f * x + (1 - f) * _gray(x))
    if hue > 0:
        f = float(rng.uniform(-hue, hue))
        ops.append(lambda x, f=f: _hue_shift(x, f))
    out = patch
    for i in rng.permutation(len(ops)):
        out = ops[int(i)](out).clamp(0.0, 1.0)
    return out


def pepper_noise(patch: torch.Tensor, generator: Generator, amount: tuple[float, float] = (0.02, 0.1),
                 salt: bool = False) -> torch.Tensor:
    """Set a random fraction (~ U(amount)) of the patch's pixels to black (and, with ``salt``,
    half of them to white). Seed 000 uses "pepper noise" on augmented patches without giving an
    amount; (0.02, 0.1) is our choice."""
    rng = numpy_rng(generator)
    h, w = patch.shape[-2:]
    frac = float(rng.uniform(*amount))
    hit = torch.from_numpy(rng.random((h, w)) < frac)
    out = patch.clone()
    out[:, hit] = 0.0
    if salt:
        white = hit & torch.from_numpy(rng.random((h, w)) < 0.5)
        out[:, white] = 1.0
    return out


def _transform_patch(patch: torch.Tensor, rng: np.random.Generator, patch_transform: str, jitter: float) -> torch.Tensor:
    if patch_transform == "jitter":
        return color_jitter(patch, rng, jitter, jitter, jitter, jitter) if jitter > 0 else patch
    if patch_transform == "pepper":
        return pepper_noise(patch, rng)
    if patch_transform == "none":
        return patch
    raise ValueError(f"patch_transform {patch_transform!r}: expected jitter, pepper or none")


# --------------------------------------------------------------------------------------------
# Rectangular patches: cutout, CutPaste, CutMix
# --------------------------------------------------------------------------------------------
def patch_size(shape: tuple[int, int], rng: np.random.Generator, area_ratio: tuple[float, float] = (0.02, 0.15),
               aspect_ratio: tuple[float, float] = (0.3, 3.3)) -> tuple[int, int]:
    """(h, w) of a RandomErasing-style box: area ~ U(area_ratio) * H * W, aspect w/h log-uniform."""
    height, width = shape
    area = rng.uniform(*area_ratio) * height * width
    aspect = float(np.exp(rng.uniform(np.log(aspect_ratio[0]), np.log(aspect_ratio[1]))))
    w = int(round(np.sqrt(area * aspect)))
    h = int(round(np.sqrt(area / aspect)))
    return min(max(h, 1), height), min(max(w, 1), width)


def _box(shape: tuple[int, int], size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``size`` box lying fully inside ``shape``."""
    return int(rng.integers(0, shape[0] - size[0] + 1)), int(rng.integers(0, shape[1] - size[1] + 1))


def _box_mask(shape: tuple[int, int], top: int, left: int, size: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top : top + size[0], left : left + size[1]] = True
    return mask


def cutout(image: torch.Tensor, generator: Generator, fill: str = "grey", area_ratio=(0.02, 0.15),
           aspect_ratio=(0.3, 3.3)) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutout variants of CutPaste table 4: a box filled with ``grey`` (0.5), the image's
    ``mean`` colour or a ``random`` colour."""
    _check_image(image)
    rng = numpy_rng(generator)
    shape = tuple(image.shape[-2:])
    size = patch_size(shape, rng, area_ratio, aspect_ratio)
    top, left = _box(shape, size, rng)
    if fill == "grey":
        colour = torch.full((3,), 0.5)
    elif fill == "mean":
        colour = image.mean(dim=(1, 2))
    elif fill == "random":
        colour = torch.from_numpy(rng.random(3).astype(np.float32))
    else:
        raise ValueError(f"cutout fill {fill!r}: expected grey, mean or random")
    out = image.clone()
    out[:, top : top + size[0], left : left + size[1]] = colour.to(image.dtype)[:, None, None]
    return out, _box_mask(shape, top, left, size)


def cutpaste(image: torch.Tensor, generator: Generator, area_ratio=(0.02, 0.15), aspect_ratio=(0.3, 3.3),
             jitter: float = 0.1, source: Optional[torch.Tensor] = None,
             patch_transform: str = "jitter") -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: cut a box from ``source`` (default: the image itself), transform it (colour
    jitter of intensity ``jitter`` by default; ``pepper`` or ``none``), paste it at an
    independent random location of the image. Both boxes lie fully inside the images."""
    _check_image(image)
    rng = numpy_rng(generator)
    src = image if source is None else source
    shape = tuple(image.shape[-2:])
    size = patch_size(shape, rng, area_ratio, aspect_ratio)
    size = (min(size[0], src.shape[-2]), min(size[1], src.shape[-1]))
    sy, sx = _box(tuple(src.shape[-2:]), size, rng)
    patch = _transform_patch(src[:, sy : sy + size[0], sx : sx + size[1]], rng, patch_transform, jitter)
    top, left = _box(shape, size, rng)
    out = image.clone()
    out[:, top : top + size[0], left : left + size[1]] = patch.to(image.dtype)
    return out, _box_mask(shape, top, left, size)


def cutmix(image: torch.Tensor, other: torch.Tensor, generator: Generator, area_ratio=(0.02, 0.15),
           aspect_ratio=(0.3, 3.3), patch_transform: str = "none", jitter: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix as seed 000 uses it: a box of ``other`` pasted into ``image``. As in CutMix
    (Yun et al.) the box keeps its location; no label mixing (this is one-class training)."""
    _check_image(image)
    rng = numpy_rng(generator)
    if other.shape != image.shape:
        raise ValueError(f"cutmix: other image shape {tuple(other.shape)} != {tuple(image.shape)}")
    shape = tuple(image.shape[-2:])
    size = patch_size(shape, rng, area_ratio, aspect_ratio)
    top, left = _box(shape, size, rng)
    patch = _transform_patch(other[:, top : top + size[0], left : left + size[1]], rng, patch_transform, jitter)
    out = image.clone()
    out[:, top : top + size[0], left : left + size[1]] = patch.to(image.dtype)
    return out, _box_mask(shape, top, left, size)


# --------------------------------------------------------------------------------------------
# Scars: long thin rotated boxes
# --------------------------------------------------------------------------------------------
def _rotated(patch: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an [h, w, 3] patch on an expanded canvas; returns (rotated patch, bool support)."""
    import cv2

    h, w = patch.shape[:2]
    rad = np.deg2rad(angle)
    nw = int(np.ceil(abs(w * np.cos(rad)) + abs(h * np.sin(rad))))
    nh = int(np.ceil(abs(w * np.sin(rad)) + abs(h * np.cos(rad))))
    matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)
    matrix[0, 2] += nw / 2.0 - w / 2.0
    matrix[1, 2] += nh / 2.0 - h / 2.0
    rot = cv2.warpAffine(patch.astype(np.float32), matrix, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    support = cv2.warpAffine(np.ones((h, w), np.float32), matrix, (nw, nh), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.5
    return rot, support


def _paste_scar(image: torch.Tensor, patch: torch.Tensor, rng: np.random.Generator,
                rotation: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(image.shape[-2:])
    rot, support = _rotated(patch.permute(1, 2, 0).numpy(), float(rng.uniform(*rotation)))
    rh, rw = min(support.shape[0], shape[0]), min(support.shape[1], shape[1])
    rot, support = rot[:rh, :rw], support[:rh, :rw]
    top, left = _box(shape, (rh, rw), rng)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[top : top + rh, left : left + rw] = torch.from_numpy(support)
    out = image.clone()
    region = out[:, top : top + rh, left : left + rw]
    sup = torch.from_numpy(support)[None]
    out[:, top : top + rh, left : left + rw] = torch.where(sup, torch.from_numpy(rot).permute(2, 0, 1).to(image.dtype), region)
    return out, mask


def _scar_size(shape: tuple[int, int], rng: np.random.Generator, width, length) -> tuple[int, int]:
    w = int(rng.integers(width[0], width[1] + 1))
    h = int(rng.integers(length[0], length[1] + 1))
    return min(h, shape[0]), min(w, shape[1])


def cutpaste_scar(image: torch.Tensor, generator: Generator, width=(2, 16), length=(10, 25),
                  rotation=(-45.0, 45.0), jitter: float = 0.1, source: Optional[torch.Tensor] = None,
                  patch_transform: str = "jitter") -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste-Scar: a long thin box (width [2, 16] px, length [10, 25] px, both inclusive)
    cut from the image, colour-jittered, rotated by U(-45, 45) degrees, pasted elsewhere."""
    _check_image(image)
    rng = numpy_rng(generator)
    src = image if source is None else source
    size = _scar_size(tuple(src.shape[-2:]), rng, width, length)
    sy, sx = _box(tuple(src.shape[-2:]), size, rng)
    patch = _transform_patch(src[:, sy : sy + size[0], sx : sx + size[1]].float(), rng, patch_transform, jitter)
    return _paste_scar(image, patch, rng, rotation)


def scar_cutout(image: torch.Tensor, generator: Generator, width=(2, 16), length=(10, 25),
                rotation=(-45.0, 45.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """The "scar" baseline (CutPaste fig. 2d): the same thin rotated box in a random colour."""
    _check_image(image)
    rng = numpy_rng(generator)
    size = _scar_size(tuple(image.shape[-2:]), rng, width, length)
    colour = torch.from_numpy(rng.random(3).astype(np.float32))
    patch = colour[:, None, None].expand(3, *size).clone()
    return _paste_scar(image, patch, rng, rotation)


# --------------------------------------------------------------------------------------------
# Confetti noise (FCDD) and whole-image rotation
# --------------------------------------------------------------------------------------------
def _gaussian_blur(x: torch.Tensor, sigma: float, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of [C, H, W] with reflect borders (kornia's default border)."""
    coords = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    c, h, w = x.shape
    pad = kernel // 2
    y = x[None]
    mode = "reflect" if min(h, w) > pad else "replicate"
    y = torch.nn.functional.pad(y, (pad, pad, 0, 0), mode=mode)
    y = torch.nn.functional.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    y = torch.nn.functional.pad(y, (0, 0, pad, pad), mode=mode)
    y = torch.nn.functional.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)
    return y[0]


def _blob_count(rng: np.random.Generator, pixels: int, rate: float) -> int:
    """Number of blob centres: each pixel is a centre with probability ``rate``, at least one."""
    while True:
        n = int(rng.binomial(pixels, rate))
        if n > 0:
            return n


def _rotated_square(shape: tuple[int, int], centre: tuple[float, float], side: int, angle: float) -> torch.Tensor:
    """Bool [H, W] mask of a ``side`` x ``side`` square centred on ``centre``, rotated by ``angle`` degrees."""
    yy, xx = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32),
                            torch.arange(shape[1], dtype=torch.float32), indexing="ij")
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = float(np.cos(np.deg2rad(angle))), float(np.sin(np.deg2rad(angle)))
    u, v = c * dx + s * dy, -s * dx + c * dy
    half = side / 2.0
    return (u.abs() <= half) & (v.abs() <= half)


def confetti(image: torch.Tensor, generator: Generator, colored_rate: float = 1.8e-5, white_rate: float = 1.2e-5,
             blob_size: tuple[int, int] = (8, 54), rotation: tuple[float, float] = (-45.0, 45.0),
             smooth_sigma: float = 5.0, smooth_kernel: int = 25,
             min_change: float = 1.0 / 255.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Confetti noise, as FCDD (Liznerski et al., ICLR 2021) makes its synthetic MVTec anomalies
    and as CutPaste's table 4 uses it ("jitters a color of a local patch").

    Definition (FCDD's ``confetti`` noise mode, values rescaled from 0..255 to 0..1):

    * blob centres: every pixel independently with probability ``colored_rate`` (1.8e-5) for
      coloured blobs and ``white_rate`` (1.2e-5) for white ones, at least one of each (FCDD's
      ``ensureblob``); about 1.2 + 0.8 blobs on a 256 x 256 image;
    * each blob a square of side U{8..54} px rotated by U(-45, 45) degrees; a coloured blob
      carries one random colour (each channel U{0..255}/255), a white blob 1.0 in every channel;
      overlapping coloured blobs overwrite each other, the white layer is summed on top;
    * the noise is smoothed by a Gaussian (25 x 25 kernel, sigma 5) and **added** to the image,
      clamped to [0, 1]; where adding changes (almost) nothing (a white image) it is subtracted
      instead (FCDD's inversion rule, threshold 0.025/255 mean change).

    The mask is where the smoothed noise reaches ``min_change`` (1/255, one 8-bit grey level) in
    some channel; outside it the image is left untouched (our cut of the Gaussian's infinite
    tail, so that "pixels outside the mask are unchanged" holds). Sizes are FCDD's pixel values
    at its 224 px MVTec input; the per-pixel rates make the expected blob count grow with area.
    """
    _check_image(image)
    rng = numpy_rng(generator)
    h, w = image.shape[-2:]
    layers = []
    for rate, colored in ((colored_rate, True), (white_rate, False)):
        layer = torch.zeros(3, h, w, dtype=torch.float32)
        for _ in range(_blob_count(rng, h * w, rate)):
            centre = (float(rng.integers(0, h)), float(rng.integers(0, w)))
            side = int(rng.integers(blob_size[0], blob_size[1] + 1))
            blob = _rotated_square((h, w), centre, side, float(rng.uniform(*rotation)))
            colour = rng.integers(0, 256, size=3).astype(np.float32) / 255.0 if colored else np.ones(3, np.float32)
            layer[:, blob] = torch.from_numpy(colour)[:, None]
        layers.append(layer)
    noise = _gaussian_blur(layers[0] + layers[1], smooth_sigma, smooth_kernel).clamp_min(0.0).to(image.dtype)
    added = (image + noise).clamp(0.0, 1.0)
    if float((added - image).mean()) < 0.025 / 255.0:
        subtracted = (image - noise).clamp(0.0, 1.0)
        if float((image - subtracted).mean()) > float((added - image).mean()):
            added = subtracted
    mask = noise.amax(dim=0) >= min_change
    return torch.where(mask[None], added, image), mask


def rotate(image: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """``image`` [3, H, W] rotated by ``quarter_turns`` x 90 degrees (counter-clockwise as
    displayed). Square images only: a rotation must not change the input geometry."""
    _check_image(image)
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(image.shape[-2:])}")
    return torch.rot90(image, int(quarter_turns) % 4, dims=(-2, -1))


# --------------------------------------------------------------------------------------------
# NSA-style seamless patches (Poisson blending)
# --------------------------------------------------------------------------------------------
def nsa_patch(image: torch.Tensor, generator: Generator, source: Optional[torch.Tensor] = None,
              width_ratio=(0.1, 0.4), height_ratio=(0.1, 0.4), scale=(0.7, 1.3), mode: str = "normal",
              min_change: float = 1.0 / 255.0) -> tuple[torch.Tensor, torch.Tensor]:
    """NSA-style anomaly: a box of ``source`` (another normal image; default the image itself),
    rescaled by U(scale), Poisson-blended (OpenCV ``seamlessClone``, ``normal`` or ``mixed``
    gradients) into a random location of the image.

    Box width/height are fractions U(width_ratio)/U(height_ratio) of the image side (NSA draws
    them per axis). Poisson blending leaves some pixels of the region (nearly) unchanged, so the
    mask is the pasted region restricted to pixels whose max channel change exceeds
    ``min_change``, which is how NSA labels its patches too; outside the region the image is
    untouched (we copy back only the region from OpenCV's output).
    """
    import cv2

    _check_image(image)
    rng = numpy_rng(generator)
    src = image if source is None else source
    H, W = image.shape[-2:]
    ph = max(4, int(round(rng.uniform(*height_ratio) * H)))
    pw = max(4, int(round(rng.uniform(*width_ratio) * W)))
    sy, sx = _box(tuple(src.shape[-2:]), (min(ph, src.shape[-2]), min(pw, src.shape[-1])), rng)
    patch = (src[:, sy : sy + ph, sx : sx + pw].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    factor = float(rng.uniform(*scale))
    nh = int(np.clip(round(patch.shape[0] * factor), 4, H - 2))
    nw = int(np.clip(round(patch.shape[1] * factor), 4, W - 2))
    patch = cv2.resize(patch, (nw, nh), interpolation=cv2.INTER_LINEAR)
    # seamlessClone needs the region strictly inside the destination: 1 px margin
    top = int(rng.integers(1, H - nh))
    left = int(rng.integers(1, W - nw))
    dst = (image.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    dst = np.ascontiguousarray(dst)
    src_mask = np.full((nh, nw), 255, np.uint8)
    center = (left + nw // 2, top + nh // 2)
    flag = cv2.MIXED_CLONE if mode == "mixed" else cv2.NORMAL_CLONE
    blended = cv2.seamlessClone(np.ascontiguousarray(patch), dst, src_mask, center, flag)
    blended_t = torch.from_numpy(blended.astype(np.float32) / 255.0).permute(2, 0, 1).to(image.dtype)
    region = _box_mask((H, W), top, left, (nh, nw))
    changed = (blended_t - image).abs().amax(0) > min_change
    mask = region & changed
    out = torch.where(mask[None], blended_t, image)
    return out, mask


# --------------------------------------------------------------------------------------------
# CutPaste training batches
# --------------------------------------------------------------------------------------------
class CutPasteSampler:
    """Turn normal images into CutPaste's self-supervised classification batch.

    Every image of the step appears once in each class (label k = the k-th version), so 32
    images give the paper's batch of 96 in ``3way`` mode (CutPaste appendix A.1: "64 (or 96 for
    3-way)"). The modes are CutPaste's proxy tasks (tables 1, 4 and 5):

    =========== ===== ==================================================================
    mode        k     versions (label 0 is always the unchanged image)
    =========== ===== ==================================================================
    3way        3     normal, CutPaste, CutPaste-Scar (the paper's method)
    binary      2     normal, CutPaste                       (table 1 "CutPaste")
    scar        2     normal, CutPaste-Scar                  (table 1 "CutPaste (scar)")
    union       2     normal, CutPaste or CutPaste-Scar, 1/2 each (table 5 "Binary (Union)")
    rotation    4     0, 90, 180, 270 degrees                (table 1 "Rotation")
    cutout      2     normal, Cutout box filled by ``cutout_fill`` (table 1 "Cutout", table 4)
    scar_cutout 2     normal, random-colour scar             (table 1 "Scar")
    confetti    2     normal, Confetti noise                 (table 4 "Confetti")
    =========== ===== ==================================================================

    ``scar`` keeps its historical meaning here (CutPaste-Scar, an image patch); the table-1
    "Scar" baseline, a Cutout of random colour, is ``scar_cutout``.
    """

    MODES = {"3way": 3, "binary": 2, "scar": 2, "union": 2, "rotation": 4, "cutout": 2, "scar_cutout": 2,
             "confetti": 2}
    FILLS = ("grey", "mean", "random")

    def __init__(self, mode: str = "3way", jitter: float = 0.1, area_ratio=(0.02, 0.15), aspect_ratio=(0.3, 3.3),
                 scar_width=(2, 16), scar_length=(10, 25), scar_rotation=(-45.0, 45.0), cutout_fill: str = "grey"):
        if mode not in self.MODES:
            raise ValueError(f"CutPaste mode {mode!r}: expected one of {', '.join(self.MODES)}")
        if cutout_fill not in self.FILLS:
            raise ValueError(f"cutout fill {cutout_fill!r}: expected one of {', '.join(self.FILLS)}")
        self.mode = mode
        self.jitter = jitter
        self.area_ratio, self.aspect_ratio = area_ratio, aspect_ratio
        self.scar_width, self.scar_length, self.scar_rotation = scar_width, scar_length, scar_rotation
        self.cutout_fill = cutout_fill

    @property
    def num_classes(self) -> int:
        return self.MODES[self.mode]

    def patch(self, image: torch.Tensor, rng) -> torch.Tensor:
        return cutpaste(image, rng, self.area_ratio, self.aspect_ratio, self.jitter)[0]

    def scar(self, image: torch.Tensor, rng) -> torch.Tensor:
        return cutpaste_scar(image, rng, self.scar_width, self.scar_length, self.scar_rotation, self.jitter)[0]

    def version(self, image: torch.Tensor, label: int, rng: np.random.Generator) -> torch.Tensor:
        """The version of ``image`` that carries class ``label`` (>= 1) in this mode."""
        mode = self.mode
        if mode in ("3way", "binary"):
            return self.patch(image, rng) if label == 1 else self.scar(image, rng)
        if mode == "scar":
            return self.scar(image, rng)
        if mode == "union":
            return self.patch(image, rng) if rng.random() < 0.5 else self.scar(image, rng)
        if mode == "rotation":
            return rotate(image, label)
        if mode == "cutout":
            return cutout(image, rng, self.cutout_fill, self.area_ratio, self.aspect_ratio)[0]
        if mode == "scar_cutout":
            return scar_cutout(image, rng, self.scar_width, self.scar_length, self.scar_rotation)[0]
        return confetti(image, rng)[0]

    def __call__(self, images: torch.Tensor, generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (images [B * num_classes, 3, H, W], labels [B * num_classes]):
        the B unchanged images (label 0), then the B versions of label 1, and so on."""
        rng = numpy_rng(generator)
        imgs = images.detach().float().cpu()
        groups = [imgs] + [torch.stack([self.version(x, k, rng) for x in imgs]) for k in range(1, self.num_classes)]
        labels = torch.cat([torch.full((len(imgs),), k, dtype=torch.long) for k in range(len(groups))])
        return torch.cat(groups).to(images.device), labels.to(images.device)
