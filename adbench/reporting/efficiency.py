"""Cost of each method from its records: ``adbench table --efficiency``.

One row per (method, dataset, category, profile, seed): fit seconds, test throughput (images per
second of ``predict`` alone, decoding excluded) and end to end, peak resident memory and what
the job added over its process baseline, parameters, FLOPs per test image (torch's
``FlopCounterMode`` over one ``predict`` image: matmuls and convolutions, which dominate; a
k-NN search through faiss and elementwise work are not counted, so memory-bank methods show
their backbone's FLOPs), and the hardware (CPU model and cores, GPU, device used).

Timings are wall-clock on whatever machine made the record, often shared: compare rows of the
same host and load only; the hardware column is there so that this is visible.
"""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd


def hardware(record: dict[str, Any]) -> str:
    host = record.get("host") or {}
    gpu = host.get("gpu_name")
    text = f"{host.get('cpu_model') or '?'} x{host.get('cpu_count') or '?'}"
    if gpu:
        text += f", {gpu}"
    return text + f" ({record.get('device') or '?'})"


def efficiency_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if r.get("status") != "ok":
            continue
        peak, start = r.get("peak_rss_mb"), r.get("rss_at_start_mb")
        flops = r.get("predict_flops_per_image")
        rows.append({
            "method": r.get("method"),
            "dataset": r.get("dataset"),
            "category": r.get("category"),
            "profile": r.get("profile"),
            "seed": r.get("seed"),
            "fit s": r.get("fit_seconds"),
            "predict img/s": r.get("test_throughput"),
            "end-to-end img/s": r.get("test_throughput_end_to_end"),
            "peak RSS MB": peak,
            "added MB": None if peak is None or start is None else round(peak - start, 1),
            "peak CUDA MB": r.get("peak_cuda_mb"),
            "params M": None if r.get("n_parameters") is None else round(r["n_parameters"] / 1e6, 2),
            "GFLOPs/img": None if flops is None else round(flops / 1e9, 2),
            "image_auroc": (r.get("metrics") or {}).get("image_auroc"),
            "hardware": hardware(r),
        })
    return rows


def efficiency_table(records: Iterable[dict[str, Any]]):
    from adbench.reporting.tables import Table

    rows = efficiency_rows(records)
    if not rows:
        from adbench.errors import DataError

        raise DataError("no ok records to tabulate")
    frame = pd.DataFrame(rows).sort_values(["dataset", "method", "category", "seed"])
    frame = frame.astype(object).where(frame.notna(), "n/a")
    for col in ("image_auroc",):
        frame[col] = [v if v == "n/a" else f"{v:.3f}" for v in frame[col]]
    frame = frame.set_index("method")
    notes = ["wall-clock timings on the recording host (see hardware; shared machines inflate them)",
             "GFLOPs/img: FlopCounterMode over one predict image (matmul/conv only; faiss k-NN not "
             "counted); n/a for records made before FLOPs were recorded",
             "added MB = peak RSS - RSS at job start (the ~0.4 GB interpreter + torch baseline)"]
    hosts = sorted({h.rsplit(" (", 1)[0] for h in frame["hardware"]})  # the device in () is not the host
    if len(hosts) > 1:
        notes.insert(0, "records come from different hardware: " + "; ".join(hosts))
    return Table(dataset=",".join(sorted(frame["dataset"].unique())), metric="efficiency", frame=frame,
                 footnotes=notes)
