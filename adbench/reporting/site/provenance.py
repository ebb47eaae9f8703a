"""Where a number comes from: the facts a reader opens from any table cell.

One entry per (setting, category): profile, config hash, weights tag with the first 12 hex
digits of its sha256, seeds, precision, device, fit seconds per seed, the record files (relative
to the results folder) and, for failed attempts, the error. Entries are plain dicts, written once
per page as JSON; the page's script shows one in the provenance panel when a cell is clicked or
focused (keyboard), so nothing hides behind a hover.
"""
from __future__ import annotations

from typing import Any


def provenance_id(dataset: str, setting, category: str) -> str:
    """A fixed element id (stable across rebuilds of the same records)."""
    return f"p-{_token(dataset)}-{setting.slug}-{_token(category)}"


def _token(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(text))


def entry(collection, dataset: str, setting, category: str) -> dict[str, Any]:
    """The provenance of one (setting, category) cell, as label -> text pairs in display order."""
    records = setting.records_of(category)
    ok = [r for r in records if r.get("status") == "ok"]
    first = (ok or records or [{}])[0]
    weights = first.get("weights_tag") or first.get("weights") or "none"
    sha = first.get("weights_sha256")
    fields = {
        "setting": setting.label,
        "dataset / category": f"{dataset} / {category}",
        "profile": str(first.get("profile")),
        "config hash": str(first.get("config_hash")),
        "weights": weights + (f" (sha256 {sha[:12]})" if sha else "") + (
            f", {first['weights_source']}" if first.get("weights_source") else ""),
        "seeds": ", ".join(str(r.get("seed")) for r in ok) or "none ok",
        "precision": str(first.get("precision") or "fp32"),
        "device": str(first.get("device")),
        "geometry": str(first.get("geometry")),
        "fit seconds": ", ".join(_seconds(r.get("fit_seconds")) for r in ok) or "n/a",
        "record files": [collection.relative(r.get("_path")) for r in records],
    }
    errors = [f"seed {r.get('seed')}: {r.get('error')}" for r in records if r.get("status") != "ok"]
    if errors:
        fields["failed attempts"] = errors
    return fields


def _seconds(value) -> str:
    return "n/a" if value is None else f"{float(value):.1f}"
