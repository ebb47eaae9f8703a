"""Versus published: our numbers next to the papers', matched by setting (``reporting.matching``).

A record is set beside a published row only when dataset, category, metric, method, mode
(CutPaste 3-way vs binary...) and protocol agree; what still differs (backbone, weights, image
size, budget, seeds) is named beside the pair. With no such row the table says so and shows the
closest row with what differs, never a silent mismatch. Published rows no record covers are
listed as coverage, so a reader sees what was not reproduced.
"""
from __future__ import annotations

from typing import Any, Optional

METRICS = ("image_auroc", "pixel_auroc", "pixel_auroc_anomalous", "aupro")


def published(records: list[dict[str, Any]], dataset: str, reference) -> dict[str, Any]:
    """Rows of matched pairs, unmatched records with their closest row, and the coverage list."""
    from adbench.reporting import matching

    if reference is None:
        return {"pairs": [], "unmatched": [], "uncovered": [], "unpublished": [],
                "why_none": "no published numbers found"}
    ok = [r for r in records if r.get("status") == "ok" and r.get("dataset") == dataset]
    pairs = matching.match(ok, reference, METRICS, dataset=dataset)
    matched = [_pair_row(p) for p in pairs if p.reference is not None]
    unmatched = [_pair_row(p) for p in pairs if p.reference is None and p.closest is not None]
    unpublished = sorted({(p.method, p.metric) for p in pairs if p.reference is None and p.closest is None})
    uncovered = matching.uncovered(ok, reference, METRICS, dataset=dataset)
    return {"pairs": matched, "unmatched": unmatched, "uncovered": _uncovered_rows(uncovered),
            "unpublished": [f"{m} ({metric})" for m, metric in unpublished],
            "why_none": None if matched or unmatched else f"no published row for the methods of {dataset}"}


def _pair_row(pair) -> dict[str, Any]:
    from adbench.reporting.reference import category_label

    row = pair.reference if pair.reference is not None else pair.closest
    return {
        "method": pair.method, "setting": pair.setting_label, "category": category_label(pair), "metric": pair.metric,
        "ours": f"{pair.ours:.3f}", "seeds": pair.n_seeds,
        "paper": _value(row), "diff": _diff(pair.ours, row),
        "source": (row or {}).get("source", ""), "paper_setting": (row or {}).get("setting", ""),
        "differences": list(pair.differences), "mismatched": list(pair.mismatched),
    }


def _value(row: Optional[dict[str, Any]]) -> str:
    return "no published row" if row is None else f"{float(row['value']):.3f}"


def _diff(ours: float, row: Optional[dict[str, Any]]) -> str:
    return "" if row is None else f"{ours - float(row['value']):+.3f}"


def _uncovered_rows(frame) -> list[dict[str, Any]]:
    if frame is None or len(frame) == 0:
        return []
    columns = [c for c in ("method", "category", "metric", "mode", "protocol", "value", "source") if c in frame]
    rows = frame[columns].to_dict("records")
    for row in rows:
        row["value"] = f"{float(row['value']):.3f}"
    return rows
