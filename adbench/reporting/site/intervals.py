"""The uncertainty shown next to every leaderboard mean, and what it covers.

A mean over categories has two sources of spread a reader may care about, and the page never
mixes them silently:

* **seeds** (trained methods vary by seed): when a setting has several seeds over the same
  categories, the per-seed means over categories give ``mean +- std`` (sample std, ddof=1).
* **test images** (a test set is a sample): with one seed and saved predictions for every
  category, the project's stratified bootstrap (``reporting.bootstrap``) resamples each
  category's test images independently; replicate b of the mean is the mean of the categories'
  replicates b (``bootstrap.mean_interval``), giving a 95 % percentile interval. Image AUROC
  and pixel AUROC only: those are the metrics the bootstrap module resamples.
* otherwise **none**, and the page says why (one seed and no saved predictions, or a metric the
  bootstrap does not cover).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from adbench.reporting import bootstrap
from adbench.results import predictions

#: bootstrap replicates, the defaults of ``image_auroc_ci`` / ``pixel_auroc_ci`` (and of ``compare``)
IMAGE_REPLICATES = 2000
PIXEL_REPLICATES = 1000
BOOTSTRAPPED = ("image_auroc", "pixel_auroc")


@dataclass(frozen=True)
class Estimate:
    """A mean over categories with its interval (``kind`` = seeds / bootstrap / none)."""

    value: Optional[float]
    kind: str
    covers: str  # what the interval covers, in words
    low: Optional[float] = None
    high: Optional[float] = None
    std: Optional[float] = None

    def text(self, decimals: int = 3) -> str:
        if self.value is None:
            return "n/a"
        f = f"{{:.{decimals}f}}"
        if self.kind == "seeds":
            return f"{f.format(self.value)} ± {f.format(self.std)}"
        if self.kind == "bootstrap":
            return f"{f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}]"
        return f.format(self.value)


class PredictionCache:
    """Saved predictions loaded once per record file (the leaderboard, the tie marks and the
    galleries all read the same arrays)."""

    def __init__(self):
        self._arrays: dict[str, Optional[dict[str, np.ndarray]]] = {}

    def get(self, record: dict[str, Any]) -> Optional[dict[str, np.ndarray]]:
        key = str(record.get("_path") or id(record))
        if key not in self._arrays:
            self._arrays[key] = predictions.load(record) if record.get("predictions") else None
        return self._arrays[key]


def estimate(setting, metric: str, cache: PredictionCache) -> Estimate:
    """The mean of ``metric`` over the setting's categories, with its interval."""
    means = setting.category_means(metric)
    if not means:
        return Estimate(None, "none", "undefined in every category")
    value = sum(means.values()) / len(means)
    seeds = setting.seeds
    if len(seeds) > 1:
        per_seed = _per_seed_means(setting, metric, sorted(means))
        if per_seed is None:
            return Estimate(value, "none", "no interval: its seeds cover different categories")
        return Estimate(value, "seeds", f"± std over {len(seeds)} seeds", std=float(np.std(per_seed, ddof=1)))
    if metric not in BOOTSTRAPPED:
        return Estimate(value, "none", "no interval: one seed, metric not bootstrapped")
    interval = bootstrap_mean(setting, metric, sorted(means), cache)
    if interval is None:
        return Estimate(value, "none", "no interval: one seed, no saved predictions")
    return Estimate(interval.value, "bootstrap", "95% bootstrap, test images", low=interval.low,
                    high=interval.high)


def _per_seed_means(setting, metric: str, categories: list[str]) -> Optional[list[float]]:
    """Each seed's mean over ``categories``; None when a seed lacks one of them (a mean over
    other categories would mix category difficulty into the seed spread)."""
    table: dict[int, dict[str, float]] = {}
    for r in setting.ok:
        v = (r.get("metrics") or {}).get(metric)
        if v is not None and math.isfinite(float(v)):
            table.setdefault(int(r.get("seed") or 0), {})[r["category"]] = float(v)
    rows = []
    for seed in setting.seeds:
        got = table.get(seed, {})
        if any(c not in got for c in categories):
            return None
        rows.append(sum(got[c] for c in categories) / len(categories))
    return rows


def bootstrap_mean(setting, metric: str, categories: list[str], cache: PredictionCache):
    """``bootstrap.mean_interval`` over the categories' saved predictions (one seed), or None
    when a category has none."""
    draws = []
    for category in categories:
        records = [r for r in setting.records_of(category) if r.get("status") == "ok"]
        arrays = cache.get(records[0]) if len(records) == 1 else None
        if arrays is None:
            return None
        try:
            if metric == "image_auroc":
                draws.append(bootstrap.image_auroc_replicates(arrays["scores"], arrays["labels"],
                                                              n_boot=IMAGE_REPLICATES))
            elif "maps" in arrays and "masks" in arrays:
                draws.append(bootstrap.pixel_auroc_replicates(arrays["maps"], arrays["masks"],
                                                              n_boot=PIXEL_REPLICATES))
            else:
                return None
        except ValueError:  # a category without both classes: its mean has no interval
            return None
    return bootstrap.mean_interval(draws)
