"""Per-category tables: one per metric, categories as rows, method settings as columns.

Each cell is the mean over the setting's seeds. The best value of a row is marked with a star
and bold; for image AUROC, a setting the paired bootstrap (``bootstrap.compare_arrays``, the
test of ``adbench compare``: same test images resampled for both, 95 % interval of the
difference) cannot separate from the best carries ``≈`` (a tie). Marks are symbols and words,
never colour alone. Ties need saved predictions of both settings on the same images (the lowest
seed both have); without them a cell has no tie mark and the table's note says so.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from adbench.reporting import bootstrap
from adbench.reporting.site.provenance import provenance_id

#: table order; a metric no record of the dataset has is left out
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "image_ap", "pixel_f1_max", "pixel_ap",
           "pixel_auroc_anomalous")
TIE_METRIC = "image_auroc"
TIE_REPLICATES = 2000  # as ``adbench compare``


def metrics_present(settings: list) -> list[str]:
    return [m for m in METRICS if any(s.category_means(m) for s in settings)]


def category_tables(dataset: str, settings: list, categories: list[str], cache) -> list[dict[str, Any]]:
    """The tables of one dataset, as plain dicts for the template."""
    return [one_table(dataset, metric, settings, categories, cache) for metric in metrics_present(settings)]


def one_table(dataset: str, metric: str, settings: list, categories: list[str], cache) -> dict[str, Any]:
    means = {s.slug: s.category_means(metric) for s in settings}
    rows, n_ties = [], 0
    for category in categories:
        cells = [_cell(dataset, s, category, means[s.slug].get(category)) for s in settings]
        best = _best(cells)
        for cell in cells:
            cell["best"] = cell["value"] is not None and cell["value"] == best
        if metric == TIE_METRIC and best is not None:
            n_ties += _mark_ties(settings, cells, category, cache)
        rows.append({"category": category, "cells": cells})
    mean_row = []
    for s in settings:
        vals = [means[s.slug][c] for c in categories if c in means[s.slug]]
        mean_row.append({"text": f"{sum(vals) / len(vals):.3f}" if vals else "n/a",
                         "note": "" if len(vals) in (0, len(categories)) else f"over {len(vals)} of {len(categories)}"})
    return {"id": f"table-{dataset}-{metric}", "metric": metric, "rows": rows, "mean_row": mean_row,
            "tie_note": _tie_note(metric, n_ties)}


def _cell(dataset: str, setting, category: str, value: Optional[float]) -> dict[str, Any]:
    records = setting.records_of(category)
    if not records:
        status, text = "missing", "–"
    elif value is None:
        failed = all(r.get("status") != "ok" for r in records)
        status, text = ("failed", "failed") if failed else ("undefined", "n/a")
    else:
        status, text = "ok", f"{value:.3f}"
    return {"value": value, "text": text, "status": status, "tie": False,
            "prov": provenance_id(dataset, setting, category) if records else ""}


def _best(cells: list[dict[str, Any]]) -> Optional[float]:
    values = [c["value"] for c in cells if c["value"] is not None and math.isfinite(c["value"])]
    return max(values) if values else None


def _mark_ties(settings: list, cells: list[dict[str, Any]], category: str, cache) -> int:
    """Mark cells the paired bootstrap cannot separate from the row's best; returns how many."""
    best = next(i for i, c in enumerate(cells) if c["best"])
    n = 0
    for i, cell in enumerate(cells):
        if cell["best"] or cell["value"] is None:
            continue
        comparison = paired(settings[best], settings[i], category, cache)
        if comparison is not None and comparison["low"] <= 0.0 <= comparison["high"]:
            cell["tie"] = True
            n += 1
    return n


def paired(a, b, category: str, cache) -> Optional[dict[str, Any]]:
    """``compare_arrays`` of two settings on one category at the lowest seed both have with
    saved predictions; None when there is no such seed or the test images differ."""
    by_seed_a = {r.get("seed"): r for r in a.records_of(category) if r.get("status") == "ok"}
    by_seed_b = {r.get("seed"): r for r in b.records_of(category) if r.get("status") == "ok"}
    for seed in sorted(set(by_seed_a) & set(by_seed_b), key=lambda s: int(s or 0)):
        pa, pb = cache.get(by_seed_a[seed]), cache.get(by_seed_b[seed])
        if pa is None or pb is None:
            continue
        try:
            return bootstrap.compare_arrays(pa, pb, n_boot=TIE_REPLICATES)
        except ValueError:  # other test images, or one class missing
            return None
    return None


def _tie_note(metric: str, n_ties: int) -> str:
    if metric != TIE_METRIC:
        return "No tie marks: the paired bootstrap covers image AUROC only."
    return (f"≈ tie: the paired bootstrap over test images (as adbench compare, {TIE_REPLICATES} replicates, "
            f"lowest shared seed) cannot separate it from the row's best (95% interval of the difference "
            f"contains 0); {n_ties} such cell(s). Cells without saved predictions of both settings get no mark.")
