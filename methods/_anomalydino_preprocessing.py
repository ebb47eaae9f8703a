"""AnomalyDINO's per-category preprocessing: which categories are masked and which rotated, the
zero-shot foreground mask, and the rotation of reference images.

Everything here follows the official code (github.com/dammsi/AnomalyDINO at ``b3435f0``), cited
as file:line.

Tables (``src/utils.py:72-185``, ``get_dataset_info``). ``preprocessing`` is the official
``--preprocess`` argument (``run_anomalydino.py:35``, default ``agnostic``):

=================  ==========================================  =====================================
mode               masking                                     rotation
=================  ==========================================  =====================================
agnostic           MVTec: capsule, hazelnut, pill, screw,      every MVTec and VisA category
                   toothbrush (utils.py:97-116); VisA: all     (utils.py:136-137, 165-166)
informed           as agnostic                                 MVTec hazelnut, screw (utils.py:118-134);
                                                               VisA none (utils.py:167-168)
masking_only       as agnostic                                 none (utils.py:138-139, 167-168)
agnostic_no_mask   none (utils.py:141-142, 160-161)            as agnostic
informed_no_mask   none                                        as informed
force_<m>_<r>      as named, every category (utils.py:172-183) as named
=================  ==========================================  =====================================

Categories of other datasets (the official code raises for any dataset but MVTec and VisA):
masking off (the masked MVTec categories were chosen by the paper's masking test, Fig. 2, per
category; without that test the safe choice is no mask, which never discards a defect), rotation
as the mode says for "every category" (on under ``agnostic`` and ``agnostic_no_mask``, off under
``informed*``, which needs knowledge of a category's poses, and ``masking_only``). The table is
keyed by category name: MVTec AD and VisA names are disjoint, and a category of another dataset
(e.g. ``--dataset folder``) called ``capsule`` gets MVTec capsule's row.

Foreground mask (``src/backbones.py:159-174``, ``compute_background_mask``), applied to *test*
images only unless ``mask_ref_images`` (``run_anomalydino.py:44``, default False;
``src/detection.py:96, 150-154``):

1. first principal component of the image's own patch features (``PCA(n_components=1,
   svd_solver='randomized')``, float32; the official call has no ``random_state``, here the
   job seed fixes it);
2. foreground = component > 10 (``threshold=10``, ``detection.py:152``);
3. if the centre of the grid (rows and columns ``[int(0.2 g), int(0.8 g))``) keeps at most 35 %
   of its patches, foreground = -component > 10 instead (``backbones.py:165-168``);
4. ``cv2.dilate`` with a 3x3 ones kernel, then ``cv2.MORPH_CLOSE`` 3x3 (``backbones.py:170-171``).
   The official mask is the PCA output's ``[N, 1]`` column, so OpenCV sees an N x 1 image: the
   3x3 kernel acts along the flattened row-major patch order (each patch's left and right
   neighbours, a row's last patch next to the following row's first), not on the 2-D grid.
   ``morphology="official"`` reproduces that; ``morphology="grid"`` applies the 3x3 operations
   to the (rows, cols) grid instead (what "3x3 dilation and closing" suggests; not what ran).

Rotation (``src/utils.py:7-22``): angles 0, 45, ..., 315 (the 0 degree copy included), about
the image centre ``(W/2, H/2)``, scale 1, same canvas, ``cv2.INTER_LINEAR``, border
``cv2.BORDER_DEFAULT`` (= ``BORDER_REFLECT_101``), on the reference image at its original
resolution, before any resize (``detection.py:83-89``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)

MODES = ("agnostic", "informed", "masking_only", "agnostic_no_mask", "informed_no_mask",
         "force_no_mask_no_rotation", "force_mask_no_rotation", "force_no_mask_rotation", "force_mask_rotation")
#: modes under which no category is ever masked
NO_MASK_MODES = ("agnostic_no_mask", "informed_no_mask", "force_no_mask_no_rotation", "force_no_mask_rotation")

MVTEC = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
         "toothbrush", "transistor", "wood", "zipper")
MVTEC_MASKED = ("capsule", "hazelnut", "pill", "screw", "toothbrush")  # utils.py:101-116
MVTEC_INFORMED_ROTATION = ("hazelnut", "screw")  # utils.py:118-134
VISA = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3",
        "pcb4", "pipe_fryum")

MASK_THRESHOLD = 10.0  # detection.py:96, 152
MASK_BORDER = 0.2  # backbones.py:159
MASK_CENTRE_KEEP = 0.35  # backbones.py:167
MASK_KERNEL = 3  # backbones.py:159


@dataclass(frozen=True)
class Policy:
    """What AnomalyDINO does with one category: mask its test images, rotate its references;
    ``table``: the row's source (``MVTec``, ``VisA``, ``force``, or ``default``)."""

    masking: bool
    rotation: bool
    table: str


def category_policy(category: str, mode: str) -> Policy:
    """The official tables (module docstring) for ``category`` under ``preprocessing=mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing {mode!r} (one of {', '.join(MODES)})")
    if mode.startswith("force_"):
        return Policy(masking=not mode.startswith("force_no_mask"), rotation=not mode.endswith("no_rotation"),
                      table="force")
    masks_any = mode not in NO_MASK_MODES
    if category in MVTEC:
        if mode.startswith("informed"):
            rotation = category in MVTEC_INFORMED_ROTATION
        else:
            rotation = mode.startswith("agnostic")
        return Policy(masking=masks_any and category in MVTEC_MASKED, rotation=rotation, table="MVTec")
    if category in VISA:
        return Policy(masking=masks_any, rotation=mode.startswith("agnostic"), table="VisA")
    return Policy(masking=False, rotation=mode.startswith("agnostic"), table="default")


# --------------------------------------------------------------------------------------------
# Foreground mask
# --------------------------------------------------------------------------------------------
def first_component(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """Scores of the patches ``[N, C]`` on their first principal component, ``[N]`` (sklearn
    ``PCA(n_components=1, svd_solver='randomized')`` on float32, seeded)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=1, svd_solver="randomized", random_state=int(seed))
    return pca.fit_transform(np.asarray(features, dtype=np.float32))[:, 0]


def mask_from_component(component: np.ndarray, grid: tuple[int, int], *, threshold: float = MASK_THRESHOLD,
                        morphology: str = "official") -> np.ndarray:
    """Foreground patches ``[N]`` (bool) from first-component scores ``[N]`` (steps 2-4 of the
    module docstring)."""
    import cv2

    rows, cols = int(grid[0]), int(grid[1])
    pc = np.asarray(component).reshape(-1, 1)
    mask = pc > threshold
    centre = mask.reshape(rows, cols)[int(rows * MASK_BORDER) : int(rows * (1 - MASK_BORDER)),
                                      int(cols * MASK_BORDER) : int(cols * (1 - MASK_BORDER))]
    if centre.sum() <= centre.size * MASK_CENTRE_KEEP:
        mask = -pc > threshold
    if morphology == "grid":
        mask = mask.reshape(rows, cols)
    elif morphology != "official":
        raise ValueError(f"unknown mask morphology {morphology!r} (official or grid)")
    kernel = np.ones((MASK_KERNEL, MASK_KERNEL), np.uint8)
    mask = cv2.dilate(mask.astype(np.uint8), kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask.astype(bool).reshape(-1)


def foreground_mask(features: np.ndarray, grid: tuple[int, int], *, threshold: float = MASK_THRESHOLD,
                    morphology: str = "official", seed: int = 0) -> np.ndarray:
    """AnomalyDINO's zero-shot foreground mask of one image's patch features ``[N, C]``: ``[N]``."""
    return mask_from_component(first_component(features, seed), grid, threshold=threshold, morphology=morphology)


# --------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------
def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """``image`` [H, W, C] (uint8 or float32) rotated by ``angle`` degrees (counter-clockwise)
    about ``(W/2, H/2)`` on the same canvas: bilinear, reflect-101 border (utils.py:18-22)."""
    import cv2

    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), float(angle), 1.0)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
