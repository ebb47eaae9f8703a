"""MVTec AD (Bergmann et al., CVPR 2019): 15 categories, 5 textures and 10 objects.

Layout: ``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``.
``categories()`` lists the category folders present on disk, so a partial copy (such as
../shared/data/mvtec_ad with bottle only) works.

Texture/object split: the MVTec AD paper's (carpet, grid, leather, tile, wood are textures).
Alignment follows the CutPaste paper (Li et al., CVPR 2021, appendix on localisation), which
builds per-location classifiers for the "aligned objects" bottle, cable, capsule, metal_nut,
pill, toothbrush, transistor and zipper, and a single classifier for hazelnut and screw, whose
objects are randomly rotated. Metal nut is rotated too in the MVTec images, but CutPaste treats
it as aligned (the nut sits centred and fills the frame); we keep the paper's list so that
CutPaste's per-location GDE reproduces the paper.
"""
from __future__ import annotations

from adbench.dataset import CategoryInfo
from adbench.registry import register_dataset

from ._mvtec_layout import MVTecStyleAdapter

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
ALIGNED_OBJECTS = ("bottle", "cable", "capsule", "metal_nut", "pill", "toothbrush", "transistor", "zipper")
UNALIGNED_OBJECTS = ("hazelnut", "screw")


@register_dataset("mvtec")
class MVTecAD(MVTecStyleAdapter):
    """MVTec AD in its release layout; masks ``ground_truth/<defect>/<stem>_mask.png``."""

    KNOWN_CATEGORIES = {
        **{c: CategoryInfo(c, "texture", False) for c in TEXTURES},
        **{c: CategoryInfo(c, "object", True) for c in ALIGNED_OBJECTS},
        **{c: CategoryInfo(c, "object", False) for c in UNALIGNED_OBJECTS},
    }
    NORMAL = "good"
    MASK_SUFFIXES = ("_mask",)
