"""Curve arithmetic shared by the exact metrics, the streamed ones and the bootstrap.

"Groups" are thresholds in descending score order: group k holds the positives / negatives
(and PRO weight) whose score falls at that threshold. Exact forms group by distinct value, the
streaming form by histogram bin, the bootstrap by reweighted bins; the arithmetic is the same,
which is what makes the three agree where their grouping does.
"""
from __future__ import annotations

import numpy as np


def pro_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under (fpr, pro) for fpr <= limit, divided by the limit.

    ``fpr`` is non-decreasing and starts at 0. The curve is interpolated linearly at the limit,
    so the result does not jump when a threshold happens to land just past it.
    """
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size:  # fpr[inside - 1] <= limit < fpr[inside]: interpolate the crossing
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_lim)
    return float(np.trapezoid(y, x) / fpr_limit)


def roc_auc_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC with each group as one tied threshold (trapezoid = ties count half)."""
    tpr = np.concatenate(([0.0], np.cumsum(pos, dtype=np.float64) / pos.sum()))
    fpr = np.concatenate(([0.0], np.cumsum(neg, dtype=np.float64) / neg.sum()))
    return float(np.trapezoid(tpr, fpr))


def ap_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of dRecall * precision."""
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(neg, dtype=np.float64)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return float(np.sum(pos / tp[-1] * precision))


def f1_max_from_groups(pos: np.ndarray, neg: np.ndarray) -> float:
    """max over thresholds of 2TP / (TP + FP + P) (= 2PR / (P + R))."""
    tp = np.cumsum(pos, dtype=np.float64)
    fp = np.cumsum(neg, dtype=np.float64)
    return float(np.max(2 * tp / (tp + fp + tp[-1])))
