"""Efficiency of each method setting: what its accuracy costs.

Per setting over its ok records: mean image AUROC, median test throughput (images per second of
``predict`` alone) and median fit seconds (medians: one slow category on a shared machine
should not move the whole setting), the largest peak resident memory, parameters and FLOPs per
test image (``reporting.efficiency`` says what they count). Two charts put image AUROC against
throughput and against fit seconds with the Pareto frontier: the settings no other setting beats
on both axes.
"""
from __future__ import annotations

from statistics import median
from typing import Any, Optional

from adbench.reporting.efficiency import hardware
from adbench.reporting.site import charts


def cost_rows(settings: list) -> list[dict[str, Any]]:
    rows = []
    for s in settings:
        ok = s.ok
        if not ok:
            continue
        auroc = s.category_means("image_auroc")
        rows.append({
            "label": s.label, "slug": s.slug, "badges": s.badges(),
            "image_auroc": sum(auroc.values()) / len(auroc) if auroc else None,
            "throughput": _median(r.get("test_throughput") for r in ok),
            "fit_seconds": _median(r.get("fit_seconds") for r in ok),
            "peak_mb": _max(r.get("peak_rss_mb") for r in ok),
            "peak_cuda_mb": _max(r.get("peak_cuda_mb") for r in ok),
            "params_m": _scaled(_median(r.get("n_parameters") for r in ok), 1e6),
            "gflops": _scaled(_median(r.get("predict_flops_per_image") for r in ok), 1e9),
            "hardware": "; ".join(sorted({hardware(r) for r in ok})),
            "records": len(ok),
        })
    return rows


def cost_charts(dataset: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key, title, higher in (("throughput", "test images per second", True), ("fit_seconds", "fit seconds", False)):
        chart = charts.cost_chart(rows, key, title, higher, f"{dataset}: image AUROC against {title}")
        if chart is not None:
            chart["id"] = f"chart-{dataset}-cost-{key}"
            out.append(chart)
    return out


def _values(values) -> list[float]:
    return [float(v) for v in values if v is not None]


def _median(values) -> Optional[float]:
    vals = _values(values)
    return median(vals) if vals else None


def _max(values) -> Optional[float]:
    vals = _values(values)
    return max(vals) if vals else None


def _scaled(value: Optional[float], unit: float) -> Optional[float]:
    return None if value is None else value / unit
