"""Published numbers (``results/reference/*.csv``) and ``adbench table --reference``.

Each CSV holds one source (a paper table, or an official results page) with the columns
``method, dataset, category, metric, value, source, setting`` (+ ``paper_name``, the method's
name in the source). ``method`` is our registry name where we implement the method
(``patchcore``, ``reverse_distillation`` for RD4AD, ``tocoad``...), otherwise the paper's name
in lower case. ``value`` is a fraction in [0, 1] like our records (the papers print percent).
``category`` is a dataset category, or ``mean`` / ``texture_mean`` / ``object_mean`` for the
published averages. One method can have several settings in one source (ToCoAD with the
CutPaste or the Perlin generator; CutPaste binary, scar and 3-way): ``setting`` tells them apart
and is part of the row's identity.

An optional ``role`` column says what a row is (``main`` where the column or the cell is empty,
as in the older CSVs):

* ``main``: a paper's headline number, compared with ours.
* ``ablation``: a hyper-parameter or component varied away from the paper's default, or a
  proxy-task baseline. ``comparison_tables`` leaves it out unless ``include_ablation=True``
  (``adbench table --reference-all``): one paper can carry dozens of ablation settings, each of
  which would add a footnote next to every record of that method.
* ``unverified``: a transcribed number whose metric or value could not be confirmed against the
  method's own paper (e.g. ToCoAD Table 1 prints RD4AD's and CFLOW-AD's pixel AUROC / PRO under an
  "image / pixel AUROC" header, and some of its means follow from nothing).
* ``test_selected``: a number its paper selected on the test set (e.g. MIAD's RD results: anomalib
  0.3.7 reloads the checkpoint with the best test-set pixel AUROC), optimistic by construction.

``unverified`` and ``test_selected`` rows stay loadable and validated, but are never compared,
not even by ``include_ablation``: a number that may be another metric, or was chosen on the test
set, is no reference for ours. Such rows must say why in an optional ``note`` column (free text,
also allowed on any other row; files without the column load with an empty note).

The comparison table never puts a number next to another without the setting of both sides:
each row names our setting (backbone, weights tag, profile, protocol, geometry) and a footnote
key for the paper's setting. The ``mean`` row compares our mean with the paper's mean *over the
same categories* (computed from its per-category values); the paper's published all-category
mean is shown in its own row, since a mean over 1 category is not a mean over 15.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

REQUIRED_COLUMNS = ("method", "dataset", "category", "metric", "value", "source", "setting")
MEAN_CATEGORIES = ("mean", "texture_mean", "object_mean")
IDENTITY = ("method", "dataset", "category", "metric", "source", "setting")
ROLES = ("main", "ablation", "unverified", "test_selected")
NOTE_REQUIRED = ("unverified", "test_selected")  # roles that must carry a ``note``


def default_dir() -> Path:
    """``results/reference`` of the checkout this package lives in."""
    return Path(__file__).resolve().parents[2] / "results" / "reference"


def load(directory: Optional[str | Path] = None) -> pd.DataFrame:
    """All reference CSVs of ``directory`` as one frame (``file`` column added)."""
    from adbench.errors import DataError

    directory = Path(directory) if directory else default_dir()
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise DataError(f"--reference-dir {directory}: no reference CSV files")
    frames = []
    for path in files:
        frame = pd.read_csv(path, dtype={"category": str}, keep_default_na=False)
        frame["file"] = path.name
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    out["role"] = roles_of(out)
    out["note"] = notes_of(out)
    return out


def roles_of(frame: pd.DataFrame) -> pd.Series:
    """The ``role`` of each row: the column's value, ``main`` where the column or the value is absent."""
    if "role" not in frame.columns:
        return pd.Series("main", index=frame.index)
    return frame["role"].fillna("").astype(str).str.strip().replace("", "main")


def notes_of(frame: pd.DataFrame) -> pd.Series:
    """The ``note`` of each row: the column's text, empty where the column or the value is absent."""
    if "note" not in frame.columns:
        return pd.Series("", index=frame.index)
    return frame["note"].fillna("").astype(str).str.strip()


def validate(frame: pd.DataFrame, known_categories: dict[str, Iterable[str]]) -> list[str]:
    """Problems of a reference frame (empty when well-formed): columns, ranges, names, duplicates."""
    from adbench.results.records import METRIC_KEYS

    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        return [f"missing column(s): {', '.join(missing)}"]
    for (i, row), role, note in zip(frame.iterrows(), roles_of(frame), notes_of(frame)):
        where = f"{row.get('file', '?')} row {i}: {row['method']}/{row['dataset']}/{row['category']}"
        if not (isinstance(row["value"], float) and 0.0 <= row["value"] <= 1.0):
            problems.append(f"{where}: value {row['value']!r} not a fraction in [0, 1]")
        if row["metric"] not in METRIC_KEYS:
            problems.append(f"{where}: unknown metric {row['metric']!r}")
        cats = known_categories.get(row["dataset"])
        if cats is None:
            problems.append(f"{where}: unknown dataset {row['dataset']!r}")
        elif row["category"] not in set(cats) | set(MEAN_CATEGORIES):
            problems.append(f"{where}: category {row['category']!r} unknown to the {row['dataset']} adapter")
        for col in REQUIRED_COLUMNS:
            if str(row[col]).strip() == "":
                problems.append(f"{where}: empty {col}")
        if role not in ROLES:
            problems.append(f"{where}: role {role!r} not one of {', '.join(ROLES)}")
        elif role in NOTE_REQUIRED and not note:
            problems.append(f"{where}: role {role} needs a note saying why")
    dup = frame[frame.duplicated(list(IDENTITY), keep=False)]
    for _, row in dup.iterrows():
        problems.append(f"duplicate: {tuple(row[c] for c in IDENTITY)}")
    return problems


def compared_roles(include_ablation: bool = False) -> tuple[str, ...]:
    """The roles ``comparison_tables`` puts next to our numbers."""
    return ("main", "ablation") if include_ablation else ("main",)


# --------------------------------------------------------------------------------------------
def our_setting(record: dict[str, Any]) -> str:
    config = record.get("config") or {}
    parts = [
        f"backbone {config.get('backbone', '-')}",
        f"weights {record.get('weights_tag') or record.get('weights') or 'default'}",
        f"profile {record.get('profile')}",
        f"protocol {record.get('protocol') or 'single'}",
        f"geometry {record.get('geometry')}",
    ]
    return ", ".join(parts)


def comparison_tables(records: Iterable[dict[str, Any]], reference: pd.DataFrame,
                      metrics: Iterable[str], dataset: Optional[str] = None, decimals: int = 3,
                      include_ablation: bool = False):
    """One ``tables.Table`` per (dataset, metric) with rows (method, category, ours, paper, diff, settings).

    Only ``role == main`` reference rows take part, plus ``ablation`` ones with ``include_ablation``;
    ``unverified`` and ``test_selected`` rows never do."""
    from adbench.reporting.tables import Table

    reference = reference[roles_of(reference).isin(compared_roles(include_ablation))]
    fmt = f"{{:.{decimals}f}}"
    ok = [r for r in records if r.get("status") == "ok" and (dataset is None or r.get("dataset") == dataset)]
    out = []
    for ds in sorted({r["dataset"] for r in ok}):
        for metric in metrics:
            ref = reference[(reference["dataset"] == ds) & (reference["metric"] == metric)]
            keys, rows, mean_notes = SettingKeys(), [], {}
            for (method, setting), per_cat in sorted(our_values(ok, ds, metric).items()):
                mref = ref[ref["method"] == method]
                for (source, psetting), group in mref.groupby(["source", "setting"], sort=True):
                    rows += _paired_rows(method, setting, per_cat, keys(source, psetting),
                                         dict(zip(group["category"], group["value"])), fmt, mean_notes)
            if not rows:
                continue
            notes = [n + _mean_note(mean_notes.get(n[1:].split("]")[0]), fmt) for n in keys.notes]
            frame = pd.DataFrame(rows).set_index("method")
            notes.insert(0, "diff = ours - paper (fractions; x100 for points). Paper values transcribed "
                            "from results/reference/*.csv; different settings (backbone, weights, epochs, "
                            "geometry) mean the difference is not the method's reproduction error alone.")
            out.append(Table(dataset=ds, metric=f"{metric} vs published", frame=frame, footnotes=notes))
    return out


class SettingKeys:
    """``R1``, ``R2``... for the published settings a table refers to, with one note each."""

    def __init__(self):
        self.keys: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []

    def __call__(self, source: str, setting: str) -> str:
        if (source, setting) not in self.keys:
            self.keys[(source, setting)] = f"R{len(self.keys) + 1}"
            self.notes.append(f"[R{len(self.keys)}] {source}: {setting}")
        return self.keys[(source, setting)]


def our_values(ok: list[dict[str, Any]], dataset: str, metric: str) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Our settings: (method, setting text) -> {category: [values over seeds]}."""
    ours: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in ok:
        if r["dataset"] != dataset:
            continue
        value = (r.get("metrics") or {}).get(metric)
        if value is None:
            continue
        ours.setdefault((r["method"], our_setting(r)), {}).setdefault(r["category"], []).append(float(value))
    return ours


def _paired_rows(method: str, setting: str, per_cat: dict[str, list[float]], key: str, pvals: dict[str, float],
                 fmt: str, mean_notes: dict) -> list[dict[str, str]]:
    """Rows of one of our settings against one published setting: each shared category, the
    mean of our categories when the paper has them all, and the paper's own mean when we cover
    at least 5 categories (else the paper mean goes into the setting's note)."""
    cats = sorted(per_cat)
    means = {c: sum(v) / len(v) for c, v in per_cat.items()}
    rows = [_row(method, c, means[c], pvals[c], setting, key, fmt) for c in cats if c in pvals]
    if len(cats) > 1 and all(c in pvals for c in cats):
        rows.append(_row(method, f"mean of our {len(cats)} categories", sum(means[c] for c in cats) / len(cats),
                         sum(pvals[c] for c in cats) / len(cats), setting, key, fmt))
    if "mean" in pvals:
        if len(cats) >= 5:
            rows.append(_row(method, "paper mean (all its categories)", sum(means.values()) / len(means),
                             pvals["mean"], setting, key, fmt))
            rows[-1]["ours"] += f" ({len(cats)} cat)"
        else:  # a mean over our 1-4 categories is not comparable with it: note only
            mean_notes.setdefault(key, {})[method] = pvals["mean"]
    return rows


def _mean_note(values: Optional[dict[str, float]], fmt: str) -> str:
    if not values:
        return ""
    text = ", ".join(f"{m} {fmt.format(v)}" for m, v in sorted(values.items()))
    return f" (published mean over all its categories: {text}; no row: ours covers fewer than 5 categories)"


def _row(method, category, ours, paper, setting, key, fmt):
    return {"method": method, "category": category, "ours": fmt.format(ours), "paper": fmt.format(paper),
            "diff": f"{ours - paper:+.{len(fmt.format(0.0)) - 2}f}", "our setting": setting, "paper setting": key}
