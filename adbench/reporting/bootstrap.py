"""Bootstrap confidence intervals over test images, and paired comparisons of two methods.

A benchmark test set is a sample: on MVTec bottle (20 normal, 63 anomalous images) one image
moved across the threshold changes image AUROC by ~0.1 point. These intervals say how much of
a difference between two numbers the test set can resolve.

* Image AUROC: *stratified* percentile bootstrap. Normal and anomalous images are resampled
  separately with replacement (keeping the class sizes, so every replicate has both classes and
  AUROC stays defined). With weights (multiplicities) ``wp`` of anomalous and ``wn`` of normal
  images, AUROC = ``wp^T K wn / (sum wp * sum wn)`` where ``K[i, j] = 1[s_i > s_j] + 0.5 *
  1[s_i = s_j]``: one matrix product per batch of replicates, no re-sorting.
* Pixel AUROC: images are the unit resampled (pixels of one image are not independent). Each
  image's normal and anomalous pixels are binned once on common quantile edges; a replicate
  sums the histograms of the drawn images and reads AUROC off the summed histograms (ties within
  a bin count half, as ``curves.roc_auc_from_groups`` does).
* Paired comparison: both methods scored on the same test images; the same resampled image
  indices are applied to both, and the interval is that of the difference. ``p`` is the
  two-sided bootstrap p-value: twice the smaller fraction of replicates on either side of 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np

from adbench.evaluation.curves import roc_auc_from_groups


@dataclass
class Interval:
    value: float
    low: float
    high: float
    n_boot: int
    level: float

    @property
    def width(self) -> float:
        return self.high - self.low

    def text(self, decimals: int = 3) -> str:
        f = f"{{:.{decimals}f}}"
        return f"{f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}]"


def _split(scores, labels):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("bootstrap needs both normal and anomalous test images")
    return pos, neg


def _kernel(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    return (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None, :])


def _weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Multiplicities [n_boot, n] of n draws with replacement from n items."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _auroc_replicates(pos, neg, wp, wn) -> np.ndarray:
    k = _kernel(pos, neg)
    return ((wp @ k) * wn).sum(1) / (wp.sum(1) * wn.sum(1))


def _interval(value: float, reps: np.ndarray, level: float) -> Interval:
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a])
    return Interval(float(value), float(lo), float(hi), len(reps), level)


def image_auroc_replicates(scores, labels, n_boot: int = 2000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(AUROC, its ``n_boot`` stratified bootstrap replicates): the draws behind ``image_auroc_ci``,
    kept so a mean over categories can be resampled category by category (``mean_interval``)."""
    pos, neg = _split(scores, labels)
    rng = np.random.default_rng(seed)
    reps = _auroc_replicates(pos, neg, _weights(rng, pos.size, n_boot), _weights(rng, neg.size, n_boot))
    return float(_kernel(pos, neg).mean()), reps


def image_auroc_ci(scores, labels, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    value, reps = image_auroc_replicates(scores, labels, n_boot=n_boot, seed=seed)
    return _interval(value, reps, level)


def mean_interval(values_and_replicates: Iterable[tuple[float, np.ndarray]], level: float = 0.95) -> Interval:
    """Interval of a mean over categories: replicate b of the mean is the mean of every
    category's replicate b. Categories are independent test sets, each resampled on its own
    (its own generator seeded as for a lone category), so one category reproduces
    ``image_auroc_ci`` / ``pixel_auroc_ci`` exactly."""
    pairs = list(values_and_replicates)
    if not pairs:
        raise ValueError("no categories to average")
    value = float(np.mean([v for v, _ in pairs]))
    reps = np.mean(np.stack([r for _, r in pairs]), axis=0)
    return _interval(value, reps, level)


def paired_image_auroc(scores_a, scores_b, labels, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) on the same images: difference, interval, two-sided p-value."""
    pa, na = _split(scores_a, labels)
    pb, nb = _split(scores_b, labels)
    rng = np.random.default_rng(seed)
    wp, wn = _weights(rng, pa.size, n_boot), _weights(rng, na.size, n_boot)
    diff = _auroc_replicates(pa, na, wp, wn) - _auroc_replicates(pb, nb, wp, wn)
    value = float(_kernel(pa, na).mean() - _kernel(pb, nb).mean())
    interval = _interval(value, diff, level)
    p = min(1.0, 2 * min((diff <= 0).mean(), (diff >= 0).mean()))
    return {"diff": value, "low": interval.low, "high": interval.high, "p": float(p), "n_boot": n_boot}


def pixel_auroc_ci(maps, masks, labels=None, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                   n_bins: int = 2048) -> Interval:
    """Pixel AUROC with images resampled (stratified by whether an image has defect pixels)."""
    value, reps = pixel_auroc_replicates(maps, masks, n_boot=n_boot, seed=seed, n_bins=n_bins)
    return _interval(value, reps, level)


def pixel_auroc_replicates(maps, masks, n_boot: int = 1000, seed: int = 0,
                           n_bins: int = 2048) -> tuple[float, np.ndarray]:
    """(pixel AUROC, its ``n_boot`` replicates), the draws behind ``pixel_auroc_ci``."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks, dtype=bool)
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    edges = np.unique(np.quantile(flat, np.linspace(0, 1, n_bins + 1)[1:-1]))
    idx = np.searchsorted(edges, flat, side="right")  # bin per pixel, ascending score
    nb = len(edges) + 1
    pos = np.zeros((n, nb))
    neg = np.zeros((n, nb))
    m = masks.reshape(n, -1)
    for i in range(n):
        pos[i] = np.bincount(idx[i][m[i]], minlength=nb)
        neg[i] = np.bincount(idx[i][~m[i]], minlength=nb)
    has = pos.sum(1) > 0
    if not has.any() or neg.sum() == 0:
        raise ValueError("pixel bootstrap needs anomalous and normal pixels")
    rng = np.random.default_rng(seed)
    a_idx, n_idx = np.flatnonzero(has), np.flatnonzero(~has)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        take = np.concatenate([rng.choice(a_idx, a_idx.size), rng.choice(n_idx, n_idx.size) if n_idx.size else []])
        take = take.astype(int)
        p, q = pos[take].sum(0), neg[take].sum(0)
        reps[b] = roc_auc_from_groups(p[::-1], q[::-1])  # groups from the highest score down
    value = roc_auc_from_groups(pos.sum(0)[::-1], neg.sum(0)[::-1])
    return float(value), reps


# --------------------------------------------------------------------------------------------
def ci_tables(records: Iterable[dict[str, Any]], metrics: Iterable[str], n_boot: int = 1000):
    """Tables of value [95% CI] per (method, category) from records with saved predictions."""
    import pandas as pd

    from adbench.results import predictions
    from adbench.reporting.tables import Table

    rows, missing = [], 0
    wanted = [m for m in metrics if m in ("image_auroc", "pixel_auroc")]
    for r in records:
        if r.get("status") != "ok":
            continue
        arrays = predictions.load(r)
        row = {"method": r["method"], "dataset": r["dataset"], "category": r["category"], "seed": r.get("seed"),
               "profile": r.get("profile"),
               "n (normal/anomalous)": f"{int((r.get('counts') or {}).get('n_normal', 0))}/"
                                       f"{int((r.get('counts') or {}).get('n_anomalous', 0))}"}
        for metric in wanted:
            recorded = (r.get("metrics") or {}).get(metric)
            if arrays is None:
                row[metric] = "n/a" if recorded is None else f"{recorded:.3f} [no saved predictions]"
                continue
            try:
                if metric == "image_auroc":
                    row[metric] = image_auroc_ci(arrays["scores"], arrays["labels"], n_boot=n_boot).text()
                elif "maps" in arrays and "masks" in arrays:
                    row[metric] = pixel_auroc_ci(arrays["maps"], arrays["masks"], n_boot=n_boot).text()
                else:
                    row[metric] = "n/a"
            except ValueError as exc:
                row[metric] = f"n/a ({exc})"
        missing += arrays is None
        rows.append(row)
    if not rows:
        return []
    frame = pd.DataFrame(rows).sort_values(["dataset", "method", "category", "seed"]).set_index("method")
    notes = [f"value [95% stratified percentile bootstrap interval over test images, {n_boot} replicates]; "
             "pixel AUROC resamples whole images (binned on 2048 quantiles)"]
    if missing:
        notes.append(f"{missing} record(s) without saved predictions: rerun with --save-predictions for intervals")
    return [Table(dataset=",".join(sorted(frame["dataset"].unique())), metric="bootstrap intervals",
                  frame=frame.drop(columns=["dataset"]), footnotes=notes)]


def compare_records(a: dict[str, Any], b: dict[str, Any], n_boot: int = 2000) -> Optional[dict[str, Any]]:
    """Paired image-AUROC comparison of two records of the same test images (same sample paths)."""
    from adbench.results import predictions

    pa, pb = predictions.load(a), predictions.load(b)
    if pa is None or pb is None:
        return None
    return compare_arrays(pa, pb, n_boot=n_boot)


def compare_arrays(pa: dict[str, np.ndarray], pb: dict[str, np.ndarray], n_boot: int = 2000) -> dict[str, Any]:
    """``paired_image_auroc`` of two saved-prediction sets, image b aligned to a by sample path."""
    order_b = {p: i for i, p in enumerate(pb["paths"])}
    if set(order_b) != set(pa["paths"]):
        raise ValueError("the two records were not evaluated on the same test images")
    idx = np.array([order_b[p] for p in pa["paths"]])
    return paired_image_auroc(pa["scores"], pb["scores"][idx], pa["labels"], n_boot=n_boot)
