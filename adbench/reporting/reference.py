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

The same setting in structured columns (``SETTING_COLUMNS``, optional: older CSVs load without
them, as empty), so that ``matching`` pairs rows with records by value, not by free text:

* ``mode``: the variant that changes what the method is, in our config's words (CutPaste
  ``binary`` / ``scar`` / ``3way`` / ``union``, ``+level7`` / ``+ensemble5`` qualifiers; ToCoAD's
  generator ``cutpaste`` / ``perlin`` / ``nsa``, ``+stages=none|ncl`` for its Table 5 rows);
  empty for a method with one variant. See ``matching.our_mode``.
* ``protocol``: ``single`` (one model per category) or ``unified`` (one for all); empty reads
  as ``single``.
* ``backbone``: the timm architecture name the source used (``resnet18``, ``wide_resnet50_2``,
  ``tf_efficientnet_b4``); ``weights``: ``imagenet`` or ``scratch``; ``image_size``: the input
  side in px (the crop where there is one); ``budget``: training length as text (``256 epochs
  of 256 steps``, ``100+100 epochs``); ``seeds``: how many runs the value averages.
  Empty = the source does not say; nothing is then claimed about it.

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

The comparison table (``comparison_tables``) is one row per ``matching.Pair``: a number is put
next to ours only when dataset, category, metric, method, mode and protocol agree; the rest of
the setting is listed as named differences, and a setting with no such row shows the closest
one, labelled as such, without a difference. Each row names our setting (mode, backbone,
weights tag, profile, protocol, geometry) and a footnote key for the paper's. The ``mean`` rows
compare our mean with the paper's mean *over the same categories*; the paper's published
all-category mean gets its own row only when we cover at least 5 categories, since a mean over
1 category is not a mean over 15.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from adbench.reporting.matching import (
    MEAN_CATEGORIES, PAPER_MEAN_MIN_CATEGORIES, PROTOCOLS, SETTING_COLUMNS, WEIGHTS, Pair, cell_text, compared_roles,
    match, mismatched_keys, paper_setting_fields, roles_of,
)

__all__ = ["REQUIRED_COLUMNS", "MEAN_CATEGORIES", "SETTING_COLUMNS", "IDENTITY", "ROLES", "NOTE_REQUIRED",
           "default_dir", "load", "roles_of", "notes_of", "validate", "compared_roles", "comparison_tables"]

REQUIRED_COLUMNS = ("method", "dataset", "category", "metric", "value", "source", "setting")
IDENTITY = ("method", "dataset", "category", "metric", "source", "setting")
ROLES = ("main", "ablation", "unverified", "test_selected")
NOTE_REQUIRED = ("unverified", "test_selected")  # roles that must carry a ``note``
INT_SETTING_COLUMNS = ("shots", "image_size", "seeds")


def default_dir() -> Path:
    """``results/reference`` of the checkout this package lives in."""
    return Path(__file__).resolve().parents[2] / "results" / "reference"


def load(directory: Optional[str | Path] = None) -> pd.DataFrame:
    """All reference CSVs of ``directory`` as one frame (``file`` column added).

    Setting columns are read as text (``image_size`` ``256``, empty where unknown) and added
    empty to CSVs without them, so old and new files concatenate into one frame."""
    from adbench.errors import DataError

    directory = Path(directory) if directory else default_dir()
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise DataError(f"--reference-dir {directory}: no reference CSV files")
    frames = []
    text_columns = {"category": str, **{c: str for c in SETTING_COLUMNS}}
    for path in files:
        frame = pd.read_csv(path, dtype=text_columns, keep_default_na=False)
        frame["file"] = path.name
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    out["role"] = roles_of(out)
    out["note"] = notes_of(out)
    for column in SETTING_COLUMNS:
        out[column] = out[column].fillna("").astype(str).str.strip() if column in out.columns else ""
    return out


def notes_of(frame: pd.DataFrame) -> pd.Series:
    """The ``note`` of each row: the column's text, empty where the column or the value is absent."""
    if "note" not in frame.columns:
        return pd.Series("", index=frame.index)
    return frame["note"].fillna("").astype(str).str.strip()


def validate(frame: pd.DataFrame, known_categories: dict[str, Iterable[str]]) -> list[str]:
    """Problems of a reference frame (empty when well-formed): columns, ranges, names, duplicates,
    and the setting columns where present (protocol, weights and integer cells)."""
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
        problems += [f"{where}: {p}" for p in setting_problems(row)]
    dup = frame[frame.duplicated(list(IDENTITY), keep=False)]
    for _, row in dup.iterrows():
        problems.append(f"duplicate: {tuple(row[c] for c in IDENTITY)}")
    return problems


def setting_problems(row: Any) -> list[str]:
    """What is wrong with a row's setting columns (none when absent): ``protocol`` single /
    unified / empty, ``weights`` imagenet / scratch / empty, ``image_size`` and ``seeds`` positive
    integers or empty, ``shots`` too (empty: the full training set). ``mode`` is free (each method names its own variants)."""
    problems = []
    protocol, weights = cell_text(row.get("protocol")), cell_text(row.get("weights"))
    if protocol not in PROTOCOLS + ("",):
        problems.append(f"protocol {protocol!r} not one of {', '.join(PROTOCOLS)} (or empty)")
    if weights not in WEIGHTS + ("",):
        problems.append(f"weights {weights!r} not one of {', '.join(WEIGHTS)} (or empty)")
    for column in INT_SETTING_COLUMNS:
        text = cell_text(row.get(column))
        if text and not (text.isdigit() and int(text) > 0):
            problems.append(f"{column} {text!r} not a positive integer (or empty)")
    return problems


# --------------------------------------------------------------------------------------------
# adbench table --reference
# --------------------------------------------------------------------------------------------
MATCH_NOTE = ("A published number stands next to ours only where dataset, category, metric, method, mode, "
              "protocol and shots (K-shot or full training set) agree; 'differences' names what else differs where the source states it (backbone, "
              "weights, image size, budget, seeds). 'no matching row': none agrees; the closest published row is "
              "named in 'paper setting' with the keys it differs in, and is not a counterpart of ours. "
              "'no published row': the method has no published number for this category and metric.")
DIFF_NOTE = ("diff = ours - paper (fractions; x100 for points). Paper values transcribed from "
             "results/reference/*.csv; different settings (backbone, weights, epochs, geometry) mean the "
             "difference is not the method's reproduction error alone.")


def comparison_tables(records: Iterable[dict[str, Any]], reference: pd.DataFrame,
                      metrics: Iterable[str], dataset: Optional[str] = None, decimals: int = 3,
                      include_ablation: bool = False):
    """One ``tables.Table`` per (dataset, metric), one row per ``matching.match`` Pair: method,
    category, ours, paper (or 'no matching row' / 'no published row'), diff, our setting, paper
    setting key (or the closest row's), differences.

    Only ``role == main`` reference rows take part, plus ``ablation`` ones with ``include_ablation``;
    ``unverified`` and ``test_selected`` rows never do. A (dataset, metric) whose Pairs show no
    published row at all gives no table (nothing to compare with)."""
    from adbench.reporting.tables import Table

    metrics = list(metrics)
    pairs = match(records, reference, metrics, dataset=dataset, include_ablation=include_ablation)
    means = _published_means(reference, include_ablation)
    fmt = f"{{:.{decimals}f}}"
    out = []
    for (ds, metric), group in _by_table(pairs).items():
        if all(p.shown is None for p in group):
            continue
        keys = SettingKeys()
        unpublished = sorted({p.method for p in group if p.reference is None and p.closest is None})
        group = [p for p in group if p.reference is not None or p.closest is not None]
        frame = pd.DataFrame([_pair_row(p, keys, fmt) for p in group]).set_index("method")
        unpaired = _means_not_compared(group, means)
        for source, setting in sorted(unpaired):
            keys(source, setting, unpaired[(source, setting)]["fields"])
        notes = [DIFF_NOTE, MATCH_NOTE] + [note + _mean_note(unpaired.get(key), fmt)
                                          for key, note in zip(keys.keys, keys.notes)]
        if unpublished:
            notes.append(f"no published {metric} in the reference CSVs for: {', '.join(unpublished)}")
        out.append(Table(dataset=ds, metric=f"{metric} vs published", frame=frame, footnotes=notes))
    return out


def _by_table(pairs: list[Pair]) -> dict[tuple[str, str], list[Pair]]:
    """Pairs by (dataset, metric), in ``match``'s order."""
    out: dict[tuple[str, str], list[Pair]] = {}
    for p in pairs:
        out.setdefault((p.dataset, p.metric), []).append(p)
    return out


class SettingKeys:
    """``R1``, ``R2``... for the published settings a table refers to, with one note each
    (source, setting text, and the mode / protocol the pairing went by)."""

    def __init__(self):
        self.keys: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []

    def __call__(self, source: str, setting: str, fields: Optional[dict[str, Any]] = None) -> str:
        if (source, setting) not in self.keys:
            self.keys[(source, setting)] = f"R{len(self.keys) + 1}"
            fields = fields or {}
            self.notes.append(f"[R{len(self.keys)}] {source}: {setting} "
                              f"[mode {fields.get('mode') or '-'}, protocol {fields.get('protocol') or 'single'}]")
        return self.keys[(source, setting)]


def category_label(p: Pair) -> str:
    if p.kind == "mean_of_ours":
        return f"mean of our {p.n_categories} categories"
    if p.kind == "paper_mean":
        return "paper mean (all its categories)"
    return p.category


def _pair_row(p: Pair, keys: SettingKeys, fmt: str) -> dict[str, str]:
    """The table row of one Pair. A closest row's value goes into its label, never into 'paper'."""
    ours = fmt.format(p.ours) + (f" ({p.n_categories} cat)" if p.kind == "paper_mean" else "")
    row = {"method": p.method, "category": category_label(p), "ours": ours, "paper": "no published row",
           "diff": "", "our setting": p.setting_label, "paper setting": "", "differences": "; ".join(p.differences)}
    shown = p.shown
    if shown is None:
        return row
    key = keys(str(shown["source"]), str(shown["setting"]), paper_setting_fields(shown))
    if p.reference is not None:
        paper = float(shown["value"])
        row.update({"paper": fmt.format(paper), "diff": f"{p.ours - paper:+.{len(fmt.format(0.0)) - 2}f}",
                    "paper setting": key})
        row["differences"] = row["differences"] or "none stated"
    else:
        row.update({"paper": "no matching row",
                    "paper setting": f"closest (differs in: {', '.join(p.mismatched)}): {key} "
                                     f"{fmt.format(float(shown['value']))}"})
    return row


def _published_means(reference: pd.DataFrame, include_ablation: bool) -> list[dict[str, Any]]:
    """The published all-category ``mean`` rows of the compared roles."""
    ref = reference[roles_of(reference).isin(compared_roles(include_ablation))]
    return ref[ref["category"] == "mean"].to_dict("records")


def _means_not_compared(pairs: list[Pair], means: list[dict[str, Any]]) -> dict[tuple[str, str], dict]:
    """Published means of settings that agree with one of ours on mode and protocol, left out of
    the rows because that setting of ours covers fewer than 5 categories: (source, setting) ->
    {"fields": the row's setting, "values": {method: value}}, for the setting's footnote."""
    out: dict[tuple[str, str], dict] = {}
    firsts = {(p.method, p.setting_label): p for p in reversed(pairs)}  # one Pair per setting of ours
    for p in firsts.values():
        if _covers_many(pairs, p):
            continue
        for row in means:
            fields = paper_setting_fields(row)
            if (row["dataset"], row["metric"], row["method"]) == (p.dataset, p.metric, p.method) \
                    and not mismatched_keys(p.our_fields, fields):
                entry = out.setdefault((str(row["source"]), str(row["setting"])), {"fields": fields, "values": {}})
                entry["values"][p.method] = float(row["value"])
    return out


def _covers_many(pairs: list[Pair], p: Pair) -> bool:
    """Whether the setting of ``p`` covers enough categories for the paper-mean row."""
    n = len({q.category for q in pairs if (q.method, q.setting_label) == (p.method, p.setting_label)
             and q.kind == "category"})
    return n >= PAPER_MEAN_MIN_CATEGORIES


def _mean_note(entry: Optional[dict], fmt: str) -> str:
    if not entry:
        return ""
    text = ", ".join(f"{m} {fmt.format(v)}" for m, v in sorted(entry["values"].items()))
    return f" (published mean over all its categories: {text}; no row: ours covers fewer than 5 categories)"
