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
* ``scar_cutout``: the "scar" baseline (DeVries & Taylor cutout as a long thin rotated box of
  random colour).
* ``cutmix``: a box from another image (seed 000's "CutMix" variant).
* ``nsa_patch``: NSA-style (Schlueter et al.) patch from another (or the same) image, randomly
  rescaled, Poisson-blended with OpenCV ``seamlessClone``.
* ``pepper_noise`` / ``color_jitter``: patch transforms of seed 000, usable on any pasted patch
  (``cutpaste(..., patch_transform="pepper")``).
* ``CutPasteSampler``: turns a batch of normal images into the classification batch CutPaste
  trains on (binary, scar-only, union, 3-way).
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
