"""What a report is built from: the store's records, grouped by dataset and method setting.

Everything the site shows comes from here, read once: the valid records (ok and failed), the
files the store refused (its warning reason kept, so the overview can list them), and the
records moved aside earlier by a resumed run (``*.invalid``). Nothing is recomputed from a live
run and nothing outside the results folder is read, except the images that saved predictions
point to (galleries) and the published numbers (``results/reference``).

A *setting* is what ``adbench table`` makes a column of (``tables.SETTING_KEYS``: method,
protocol, training set, profile, config hash, weights, precision); seeds of one setting are
averaged, never two settings.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from adbench.results.store import INVALID_SUFFIX, Store, warn
from adbench.reporting.tables import SETTING_KEYS, column_labels, setting_of


@dataclass
class Setting:
    """One method setting of one dataset: its records by category and seed."""

    key: tuple
    label: str
    slug: str  # a fixed element id, stable across rebuilds
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.key[0]

    @property
    def shots(self) -> int:
        """The k-shot protocol's K, 0 for every training image."""
        return int(self.key[SETTING_KEYS.index("shots")] or 0)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("status") == "ok"]

    @property
    def categories(self) -> list[str]:
        return sorted({r["category"] for r in self.ok})

    @property
    def seeds(self) -> list[int]:
        return sorted({int(r.get("seed") or 0) for r in self.ok})

    def values(self, metric: str) -> dict[str, list[float]]:
        """Category -> the metric's finite values over seeds."""
        out: dict[str, list[float]] = defaultdict(list)
        for r in self.ok:
            v = (r.get("metrics") or {}).get(metric)
            if v is not None and math.isfinite(float(v)):
                out[r["category"]].append(float(v))
        return dict(out)

    def category_means(self, metric: str) -> dict[str, float]:
        """Category -> mean over seeds (categories where the metric is defined)."""
        return {c: sum(v) / len(v) for c, v in self.values(metric).items()}

    def records_of(self, category: str) -> list[dict[str, Any]]:
        return sorted((r for r in self.records if r.get("category") == category),
                      key=lambda r: (int(r.get("seed") or 0), r.get("status") != "ok"))

    def badges(self) -> list[str]:
        """Why this setting is not a paper-budget result: ``quick profile``, ``random weights``,
        ``fallback weights`` (a quick profile that found no weights file). Empty = paper budget."""
        out: set[str] = set()
        for r in self.records:
            if str(r.get("profile") or "").startswith("quick"):
                out.add("quick profile")
            source = str(r.get("weights_source") or "")
            if source.startswith("random"):
                out.add("fallback weights" if "fallback" in source else "random weights")
        return sorted(out)


@dataclass
class Collection:
    """The records of a results folder, as the report needs them."""

    root: Path
    records: list[dict[str, Any]]
    refused: list[tuple[str, str]]  # (file, reason) the store skipped with a warning
    moved_aside: list[str]  # *.invalid files of earlier resumed runs
    settings: dict[str, list[Setting]]  # dataset -> its settings, in label order

    @property
    def datasets(self) -> list[str]:
        return sorted(self.settings)

    def categories(self, dataset: str) -> list[str]:
        """Every category any record of the dataset names (the grid's columns)."""
        return sorted({r["category"] for s in self.settings[dataset] for r in s.records})

    def relative(self, path: Optional[str]) -> str:
        """A record's file relative to the results folder (what a reader can find)."""
        return relative_to(self.root, path) if path else ""


def collect(results: str | Path, datasets: Optional[list[str]] = None) -> Collection:
    """Read the store under ``results`` (every refused file: the store's warning on stderr, and
    kept with its reason for the overview)."""
    root = Path(results)
    refused: list[tuple[str, str]] = []

    def keep_warning(path, reason):
        warn(path, reason)
        refused.append((str(path), reason))

    store = Store(root, warn=keep_warning)
    records = [r for r in store.records() if not datasets or r.get("dataset") in datasets]
    moved = sorted(str(p.relative_to(root)) for p in root.rglob(f"*.json{INVALID_SUFFIX}*")
                   if not any(part.startswith(".") for part in p.relative_to(root).parts))
    refused = sorted(set((relative_to(root, p), reason) for p, reason in refused))
    return Collection(root=root, records=records, refused=refused, moved_aside=moved,
                      settings=group_settings(records))


def relative_to(root: Path, path: str) -> str:
    """``path`` relative to ``root`` when it lies below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def group_settings(records: list[dict[str, Any]]) -> dict[str, list[Setting]]:
    """Dataset -> settings, labelled as ``adbench table`` labels its columns."""
    if not records:
        return {}
    keys = pd.DataFrame([setting_of(r) for r in records], columns=list(SETTING_KEYS))
    labels = column_labels(keys)
    out: dict[str, dict[tuple, Setting]] = defaultdict(dict)
    for record in records:
        key = setting_of(record)
        by_key = out[str(record.get("dataset"))]
        if key not in by_key:
            by_key[key] = Setting(key=key, label=labels[key], slug="")
        by_key[key].records.append(record)
    result = {}
    for dataset, by_key in out.items():
        settings = sorted(by_key.values(), key=lambda s: s.label)
        for i, setting in enumerate(settings):
            setting.slug = f"s{i}"
        result[dataset] = settings
    return result
