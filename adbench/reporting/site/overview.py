"""The overview page: the grid that was run, the environment the records came from, and the
files the store refused.

The grid has one row per method setting and one column per category any record of the dataset
names; a cell is ``done`` (every record ok; the number of seeds shown), ``failed`` (no ok
record; the error opens in the provenance panel) or ``missing`` (no record at all).
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from adbench.reporting.site.provenance import provenance_id

DONE, FAILED, MISSING = "done", "failed", "missing"
MARKS = {DONE: "✓", FAILED: "✗", MISSING: "–"}


def grid(collection, dataset: str) -> dict[str, Any]:
    categories = collection.categories(dataset)
    rows, counts = [], Counter()
    for setting in collection.settings[dataset]:
        cells = []
        for category in categories:
            records = setting.records_of(category)
            ok = [r for r in records if r.get("status") == "ok"]
            status = DONE if ok else FAILED if records else MISSING
            counts[status] += 1
            text = f"{MARKS[status]} {status}" + (f" ({len(ok)} seeds)" if len(ok) > 1 else "")
            if ok and len(ok) < len(records):
                text += f", {len(records) - len(ok)} failed"
            reason = "; ".join(sorted({str(r.get("error")) for r in records if r.get("status") != "ok"}))
            cells.append({"status": status, "text": text, "reason": reason,
                          "prov": provenance_id(dataset, setting, category) if records else ""})
        rows.append({"label": setting.label, "badges": setting.badges(), "cells": cells})
    return {"dataset": dataset, "categories": categories, "rows": rows, "counts": dict(counts)}


def environment(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Distinct software/hardware combinations and weights files, with how many records each."""
    env = Counter()
    weights = Counter()
    for r in records:
        versions = r.get("versions") or {}
        host = r.get("host") or {}
        commit = r.get("git_commit") or "unknown"
        env[(versions.get("adbench") or "?", commit[:12] + ("-dirty" if commit.endswith("-dirty") else ""),
             versions.get("torch") or "?", str(r.get("device") or "?"), host.get("gpu_name") or "none",
             f"{host.get('cpu_model') or '?'} x{host.get('cpu_count') or '?'}",
             str(r.get("precision") or "fp32"), str(r.get("torch_threads") or "?"))] += 1
        sha = r.get("weights_sha256")
        weights[(r.get("weights_tag") or "none", sha[:12] if sha else "–", r.get("weights_source") or "–")] += 1
    env_keys = ("adbench", "commit", "torch", "device", "GPU", "CPU", "precision", "threads")
    return {
        "software": [dict(zip(env_keys, k), records=n) for k, n in sorted(env.items())],
        "weights": [dict(zip(("tag", "sha256", "source"), k), records=n) for k, n in sorted(weights.items())],
    }
