"""Exact anomaly-detection metrics on NumPy arrays, and the curve arithmetic they share.

Image level (one score per image, label 0 normal / 1 anomalous):
``image_auroc``, ``f1_max``, ``average_precision``.
Pixel level (maps [N, H, W] float, masks [N, H, W] bool):
``pixel_auroc``, ``pixel_f1_max``, ``pixel_ap``, ``aupro``.

Conventions, chosen so that a benchmark record never hides a problem:

* An undefined metric (only one class present, no ground-truth region) returns ``nan``;
  ``undefined_reason`` / ``pixel_undefined_reason`` say why in words for the record.
* NaN or inf in scores or maps raises ``ValueError``: dropping them silently would report a
  metric on a different test set than the one the method was given.
* Ties are one threshold: all pixels with equal score are in or out together, which is what
  makes a constant map score an AUROC of exactly 0.5.

AUROC, AP and F1-max use scikit-learn (the reference everyone compares with). AUPRO has no
scikit-learn form, so it is computed here, following the MVTec AD definition: every 8-connected
component of a ground-truth mask is a region; at a threshold t, PRO(t) is the mean over all
regions (of all images) of the fraction of the region's pixels with score >= t, and FPR(t) is
the fraction of all normal pixels with score >= t. The (FPR, PRO) curve starts at (0, 0), has
one point per distinct score, is integrated with the trapezoid rule up to ``fpr_limit`` (linearly
interpolated there) and divided by ``fpr_limit`` so that a perfect map scores 1.

The streaming evaluator (``adbench.evaluation.streaming``) reduces the same quantities to
score histograms and feeds them through the curve helpers of ``adbench.evaluation.curves``
(``roc_auc_from_groups``, ``ap_from_groups``, ``f1_max_from_groups``, ``pro_area``), as AUPRO
here does, so exact and streaming forms differ only in how pixels are grouped into thresholds.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adbench.evaluation.curves import pro_area

__all__ = [
    "image_auroc", "f1_max", "average_precision",
    "pixel_auroc", "pixel_f1_max", "pixel_ap", "aupro",
    "undefined_reason", "pixel_undefined_reason", "region_weights",
]

# 8-connectivity, as in the MVTec AD evaluation: diagonal neighbours belong to one defect.
REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- validation

def check_finite(values: np.ndarray, what: str) -> None:
    """Raise a ValueError naming how many values are NaN/inf (the runner fails the job)."""
    if values.size and not np.isfinite(values).all():
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        raise ValueError(f"{what} contain {bad} NaN/inf value(s) out of {values.size}; "
                         "metrics are not computed on non-finite scores")


def as_labels(labels, n: Optional[int] = None, what: str = "labels") -> np.ndarray:
    """Labels as a 1-D bool array; anything but 0/1 is an error, not a guess."""
    arr = np.asarray(labels).reshape(-1)
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what} must be 0/1 (normal/anomalous), got values {np.unique(arr)[:5]}")
        arr = arr.astype(bool)
    if n is not None and arr.size != n:
        raise ValueError(f"{what} has {arr.size} entries but there are {n} scores")
    return arr


def as_masks(masks, shape: Optional[tuple] = None) -> np.ndarray:
    """Masks as a bool array. Non-bool masks must hold only 0/1: an interpolated (blurred) mask
    would otherwise turn into a much larger defect without anyone noticing."""
    arr = np.asarray(masks)
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError("masks must be boolean or 0/1; got other values (interpolated mask?)")
        arr = arr.astype(bool)
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"masks have shape {arr.shape} but maps have shape {tuple(shape)}")
    return arr


def _scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    check_finite(s, "image scores")
    return s, as_labels(labels, s.size)


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"maps must be [N, H, W] (or one [H, W] map), got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float64)
    check_finite(m, "anomaly maps")
    g = np.asarray(masks)
    if g.ndim == 2:
        g = g[None]
    return m, as_masks(g, m.shape)


# ----------------------------------------------------------------------------- reasons

def undefined_reason(labels) -> Optional[str]:
    """Why image-level metrics cannot be computed for these labels, or None if they can."""
    lab = as_labels(labels)
    if lab.size == 0:
        return "test set is empty"
    if not lab.any():
        return "test set has no anomalous images"
    if lab.all():
        return "test set has no normal images"
    return None


def pixel_undefined_reason(n_anomalous: int, n_normal: int) -> Optional[str]:
    """Why pixel-level metrics cannot be computed from these pixel counts, or None."""
    if n_anomalous + n_normal == 0:
        return "no pixels with ground truth"
    if n_anomalous == 0:
        return "ground-truth masks contain no anomalous pixels"
    if n_normal == 0:
        return "ground-truth masks contain no normal pixels"
    return None


# ----------------------------------------------------------------------------- image metrics

def image_auroc(scores, labels) -> float:
    """Area under the ROC curve of image scores (nan when one class is missing)."""
    s, y = _scores_and_labels(scores, labels)
    if undefined_reason(y):
        return float("nan")
    return float(roc_auc_score(y, s))


def average_precision(scores, labels) -> float:
    """Average precision (scikit-learn's step-wise sum, no interpolation)."""
    s, y = _scores_and_labels(scores, labels)
    if undefined_reason(y):
        return float("nan")
    return float(average_precision_score(y, s))


def f1_max(scores, labels) -> float:
    """Best F1 over all thresholds (ties move together), as reported by PatchCore-style papers."""
    s, y = _scores_and_labels(scores, labels)
    if undefined_reason(y):
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


# ----------------------------------------------------------------------------- pixel metrics

def _pixel_defined(masks: np.ndarray) -> bool:
    n_pos = int(np.count_nonzero(masks))
    return pixel_undefined_reason(n_pos, masks.size - n_pos) is None


def pixel_auroc(maps, masks) -> float:
    """Pixel-wise AUROC over all pixels of all images (nan without both pixel classes)."""
    m, g = _maps_and_masks(maps, masks)
    if not _pixel_defined(g):
        return float("nan")
    return float(roc_auc_score(g.reshape(-1), m.reshape(-1)))


def pixel_ap(maps, masks) -> float:
    """Pixel-wise average precision over all pixels of all images."""
    m, g = _maps_and_masks(maps, masks)
    if not _pixel_defined(g):
        return float("nan")
    return float(average_precision_score(g.reshape(-1), m.reshape(-1)))


def pixel_f1_max(maps, masks) -> float:
    """Best pixel-wise F1 over all thresholds."""
    m, g = _maps_and_masks(maps, masks)
    if not _pixel_defined(g):
        return float("nan")
    return f1_max(m.reshape(-1), g.reshape(-1))


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weight of one [H, W] mask: 1 / (size of the pixel's region), 0 outside.

    Why: the sum of these weights over the pixels above a threshold equals the sum over regions
    of the fraction of each region above it, so PRO = (that sum) / n_regions. This turns the
    per-region overlap into a per-pixel quantity that can be sorted or histogrammed.
    Returns the weights (float64) and the number of regions.
    """
    labelled, n_regions = ndimage.label(mask, structure=REGION_STRUCTURE)
    if n_regions == 0:
        return np.zeros(mask.shape, dtype=np.float64), 0
    sizes = np.bincount(labelled.reshape(-1))
    inverse = np.zeros(sizes.shape, dtype=np.float64)
    inverse[1:] = 1.0 / sizes[1:]
    return inverse[labelled], int(n_regions)


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD).

    Exact form: every distinct score is a threshold. Needs all pixels in memory (a sort of
    N*H*W values); the streaming evaluator is the bounded-memory alternative.
    Returns nan when there is no ground-truth region or no normal pixel.
    """
    check_fpr_limit(fpr_limit)
    m, g = _maps_and_masks(maps, masks)
    weights = np.empty(m.shape, dtype=np.float64)
    n_regions = 0
    for i in range(m.shape[0]):
        weights[i], k = region_weights(g[i])
        n_regions += k
    n_normal = int(g.size - np.count_nonzero(g))
    if n_regions == 0 or n_normal == 0:
        return float("nan")
    values = m.reshape(-1)
    order = np.argsort(values)[::-1]  # descending; ties are grouped below, so stability is moot
    sorted_values = values[order]
    # Last index of each run of equal scores: the curve gets one point per distinct threshold.
    ends = np.append(np.flatnonzero(sorted_values[1:] != sorted_values[:-1]), values.size - 1)
    del sorted_values
    false_pos = np.cumsum(~g.reshape(-1)[order], dtype=np.int64)[ends]
    overlap = np.cumsum(weights.reshape(-1)[order])[ends]
    fpr = np.concatenate(([0.0], false_pos / n_normal))
    pro = np.concatenate(([0.0], overlap / n_regions))
    return pro_area(fpr, pro, fpr_limit)


def check_fpr_limit(fpr_limit: float) -> None:
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
