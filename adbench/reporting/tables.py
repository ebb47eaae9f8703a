"""Per-category tables from stored records alone (never from a live run).

One table per (dataset, metric): categories as rows, one column per method *setting*, a mean
row, and texture/object mean rows when the dataset's categories are of both kinds (MVTec).

Different settings are never averaged together silently. A column is one (method, protocol,
profile, config hash, weights, precision); when a method has records under several of these, each gets
its own column with a suffix saying what differs (``uniad (unified)``, ``patchcore [quick]``,
``draem {cfg 1a2b3c4d}``, ``draem [bf16]``); unified models trained on different category sets are different
settings too. Seeds of one setting are averaged, and the footnotes say over how
many. Undefined values (e.g. no anomalous test image) show as ``n/a`` with a footnote giving
the reason; a category with only failed records shows ``failed``. Means are over the categories
where the value is defined, and a footnote says when that is not all of them. Pixel metrics
from columns evaluated at different geometries get a footnote listing them.

``--long`` gives one row per (method, dataset, category, metric, value) for scripts.
"""
from __future__ import annotations

import html as _html
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pandas as pd

from adbench.jobs import categories_hash

DEFAULT_METRICS = ("image_auroc", "pixel_auroc")
FORMATS = ("md", "csv", "latex", "html")
SETTING_KEYS = ("method", "protocol", "shots", "training", "profile", "config_hash", "weights", "precision")


@dataclass
class Table:
    dataset: str
    metric: str
    frame: pd.DataFrame  # display strings; index = row labels
    footnotes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.dataset}: {self.metric}"


# --------------------------------------------------------------------------------------------
# Records -> frames
# --------------------------------------------------------------------------------------------
def setting_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``SETTING_KEYS`` for one record: what makes two records the same setting."""
    protocol = record.get("protocol") or "single"
    return {
        "method": record.get("method"),
        "protocol": protocol,
        "shots": int(record["shots"]) if record.get("shots") else 0,  # 0: every training image
        # a unified model is defined by the categories it was trained on
        "training": ",".join(sorted(record.get("training_categories") or [])) if protocol != "single" else "",
        "profile": record.get("profile"),
        "config_hash": record.get("config_hash"),
        "weights": record.get("weights") or "",
        "precision": record.get("precision") or "fp32",  # records from before --precision: fp32
    }


def setting_of(record: dict[str, Any]) -> tuple:
    """The setting tuple (in ``SETTING_KEYS`` order) of one record."""
    fields = setting_fields(record)
    return tuple(fields[k] for k in SETTING_KEYS)


def long_frame(records: Iterable[dict[str, Any]], metrics: Optional[Iterable[str]] = None) -> pd.DataFrame:
    """One row per (record, metric): method, dataset, category, ..., metric, value, reason."""
    rows = []
    wanted = list(metrics) if metrics else None
    for r in records:
        values = r.get("metrics") or {}
        undefined = r.get("undefined") or {}
        keys = wanted or list(values)
        for metric in keys:
            rows.append({
                **setting_fields(r),
                "dataset": r.get("dataset"),
                "category": r.get("category"),
                "category_kind": r.get("category_kind"),
                "seed": r.get("seed"),
                "geometry": r.get("geometry"),
                "status": r.get("status"),
                "metric": metric,
                "value": values.get(metric) if r.get("status") == "ok" else None,
                "reason": (undefined.get(metric) if r.get("status") == "ok" else r.get("error")),
            })
    columns = ["method", "dataset", "category", "category_kind", "protocol", "shots", "training", "profile", "seed",
               "config_hash", "weights", "precision", "geometry", "status", "metric", "value", "reason"]
    return pd.DataFrame(rows, columns=columns)


def column_labels(frame: pd.DataFrame) -> dict[tuple, str]:
    """Setting tuple -> column label; suffixes only for what differs within one method."""
    settings = frame[list(SETTING_KEYS)].drop_duplicates()
    labels: dict[tuple, str] = {}
    for method, group in settings.groupby("method", sort=True):
        varies = {k: group[k].nunique() > 1 for k in ("training", "profile", "config_hash", "weights", "precision")}
        unified_sets = group.loc[group["protocol"] != "single", "training"].nunique()
        for row in group.itertuples(index=False):
            label = str(method)
            if row.shots:
                label += f" ({row.shots}-shot)"
            if row.protocol != "single":
                label += f" ({row.protocol})"
                if unified_sets > 1:
                    n = len(row.training.split(","))
                    label += f" [{n} cats {categories_hash(row.training.split(','))}]"
            if varies["profile"]:
                label += f" [{row.profile}]"
            if varies["weights"]:
                label += f" [weights {row.weights or 'default'}]"
            if varies["config_hash"]:
                label += f" {{cfg {row.config_hash}}}"
            if varies["precision"]:
                label += f" [{row.precision}]"
            labels[tuple(getattr(row, k) for k in SETTING_KEYS)] = label
    return labels


def build_tables(records: Iterable[dict[str, Any]], metrics: Iterable[str] = DEFAULT_METRICS,
                 dataset: Optional[str] = None, decimals: int = 3) -> list[Table]:
    records = [r for r in records if dataset is None or r.get("dataset") == dataset]
    metrics = list(metrics)
    frame = long_frame(records, metrics)
    if frame.empty:
        return []
    frame["setting"] = list(zip(*(frame[k] for k in SETTING_KEYS)))
    labels = column_labels(frame)
    tables = []
    for ds in sorted(frame["dataset"].dropna().unique()):
        sub_ds = frame[frame["dataset"] == ds]
        for metric in metrics:
            sub = sub_ds[sub_ds["metric"] == metric]
            if sub.empty:
                continue
            tables.append(_one_table(ds, metric, sub, labels, decimals))
    return tables


class Notes:
    """A table's numbered footnotes, numbered in the order they are first referenced."""

    def __init__(self):
        self.items: list[str] = []

    def __call__(self, text: str) -> str:
        """The ``[k]`` marker of ``text`` (added if new)."""
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"


def _one_table(dataset: str, metric: str, sub: pd.DataFrame, labels: dict, decimals: int) -> Table:
    note = Notes()  # numbered, referenced by [k] markers
    fmt = f"{{:.{decimals}f}}"
    settings = sorted(sub["setting"].unique(), key=lambda s: labels[s])
    categories = sorted(sub["category"].unique())
    kinds = sub.drop_duplicates("category").set_index("category")["category_kind"].to_dict()
    cells: dict[str, dict[str, str]] = {}
    means_by_setting: dict[tuple, dict[str, float]] = {}
    for setting in settings:
        cells[labels[setting]], means_by_setting[setting] = _setting_cells(
            labels[setting], sub[sub["setting"] == setting], categories, fmt, note)
    groups = [("mean", categories)]
    if {"texture", "object"} <= {kinds.get(c) for c in categories}:
        groups.append(("texture mean", [c for c in categories if kinds.get(c) == "texture"]))
        groups.append(("object mean", [c for c in categories if kinds.get(c) == "object"]))
    for row_label, cats in groups:
        for setting in settings:
            col = labels[setting]
            cells[col][row_label] = _mean_cell(col, row_label, cats, means_by_setting[setting], fmt, note)
    general = _table_notes(metric, sub, settings, labels)  # about the whole table, no marker
    rows = categories + [g[0] for g in groups]
    columns = {}
    for setting in settings:
        col = labels[setting]
        head = col + (" " + cells[col].pop("__label_note__") if "__label_note__" in cells[col] else "")
        columns[head] = [cells[col].get(r, "") for r in rows]
    frame = pd.DataFrame(columns, index=pd.Index(rows, name="category"))
    notes_out = general + [f"[{i}] {n}" for i, n in enumerate(note.items, 1)]
    return Table(dataset=dataset, metric=metric, frame=frame, footnotes=notes_out)


def _setting_cells(col: str, s: pd.DataFrame, categories: list[str], fmt: str,
                   note: Notes) -> tuple[dict[str, str], dict[str, float]]:
    """One column: a cell per category ('' no record, 'failed', 'n/a [k]' undefined, else the
    mean over seeds with markers), and the per-category values the mean rows average."""
    cells: dict[str, str] = {}
    per_cat: dict[str, float] = {}
    seeds = sorted(s.loc[s["status"] == "ok", "seed"].dropna().unique())
    label_marker = note(f"{col}: mean over {len(seeds)} seeds ({', '.join(map(str, seeds))})") if len(seeds) > 1 else ""
    for category in categories:
        c = s[s["category"] == category]
        ok = c[c["status"] == "ok"]
        if c.empty or ok.empty:
            cells[category] = "" if c.empty else "failed"
            continue
        if ok["seed"].duplicated().any():
            note(f"{col} {category}: several records for one seed (e.g. different data roots), averaged")
        defined = ok["value"].dropna()
        defined = defined[[math.isfinite(float(v)) for v in defined]]
        if defined.empty:
            reasons = sorted({str(x) for x in ok["reason"].dropna()}) or ["undefined"]
            cells[category] = "n/a " + note("n/a: " + "; ".join(reasons))
            continue
        value = float(defined.astype(float).mean())
        per_cat[category] = value
        text = fmt.format(value)
        if len(defined) < len(ok):
            text += " " + note(f"{col}: some seeds undefined, mean over the defined ones")
        n_seeds = ok["seed"].nunique()
        if len(seeds) > 1 and n_seeds != len(seeds):
            text += " " + note(f"{col} {category}: {n_seeds} of {len(seeds)} seeds")
        cells[category] = text
    if label_marker:
        cells["__label_note__"] = label_marker
    return cells, per_cat


def _mean_cell(col: str, row_label: str, cats: list[str], per_cat: dict[str, float], fmt: str, note: Notes) -> str:
    """A mean row's cell: the mean over the categories with a value, marked when some lack one."""
    vals = [per_cat[c] for c in cats if c in per_cat]
    if not vals:
        return "n/a"
    text = fmt.format(sum(vals) / len(vals))
    if len(vals) < len(cats):
        text += " " + note(f"{col} {row_label}: over {len(vals)} of {len(cats)} categories "
                           f"(the others undefined or failed)")
    return text


def _table_notes(metric: str, sub: pd.DataFrame, settings: list, labels: dict) -> list[str]:
    """Table-wide notes: the profile(s) the columns ran, and pixel metrics measured at
    different evaluation geometries (never compared silently)."""
    general: list[str] = []
    ok = sub[sub["status"] == "ok"]
    profiles = sorted(ok["profile"].dropna().unique())
    if len(profiles) == 1:
        general.append(f"profile: {profiles[0]}")
    elif len(profiles) > 1:
        per_col = {labels[s]: ",".join(sorted(ok.loc[ok["setting"] == s, "profile"].dropna().unique()))
                   for s in settings}
        general.append("profiles differ between columns: " + "; ".join(f"{c}: {p}" for c, p in per_col.items()))
    if metric.startswith("pixel") or metric == "aupro":
        geos = {labels[s]: sorted(sub.loc[(sub["setting"] == s) & (sub["status"] == "ok"), "geometry"]
                                  .dropna().unique()) for s in settings}
        if len({g for gs in geos.values() for g in gs}) > 1:
            general.append("pixel metrics at different evaluation geometries: "
                           + "; ".join(f"{c}: {', '.join(g)}" for c, g in geos.items()))
    return general


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def render(tables: list[Table], fmt: str = "md") -> str:
    if fmt not in FORMATS:
        from adbench.errors import ConfigError

        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    parts = []
    for table in tables:
        parts.append(_render_one(table, fmt))
    joiner = "\n" if fmt == "csv" else "\n\n"
    return joiner.join(parts).rstrip() + "\n"


def _render_one(table: Table, fmt: str) -> str:
    from tabulate import tabulate

    df = table.frame
    if fmt == "md":
        body = tabulate(df, headers=[df.index.name or ""] + list(df.columns), tablefmt="github",
                        disable_numparse=True)
        notes = "\n".join(f"{n}  " for n in table.footnotes)
        return f"### {table.title}\n\n{body}\n\n{notes}".rstrip()
    if fmt == "csv":
        head = f"# {table.title}\n"
        notes = "".join(f"# {n}\n" for n in table.footnotes)
        return head + df.to_csv() + notes
    if fmt == "latex":
        body = tabulate(df, headers=[df.index.name or ""] + list(df.columns), tablefmt="latex_booktabs",
                        disable_numparse=True)
        notes = "\n".join(f"% {n}" for n in table.footnotes)
        caption = table.title.replace("_", r"\_")
        return f"% {caption}\n{body}\n{notes}".rstrip()
    # html
    body = df.to_html(escape=True, border=0)
    notes = "".join(f"<li>{_html.escape(n)}</li>" for n in table.footnotes)
    return f"<h3>{_html.escape(table.title)}</h3>\n{body}\n<ul class=\"notes\">{notes}</ul>"


def render_long(records: Iterable[dict[str, Any]], metrics: Optional[Iterable[str]] = None,
                fmt: str = "csv", dataset: Optional[str] = None) -> str:
    records = [r for r in records if dataset is None or r.get("dataset") == dataset]
    frame = long_frame(records, metrics)
    frame = frame.sort_values(["dataset", "method", "protocol", "category", "seed", "metric"], kind="stable")
    frame = frame.reset_index(drop=True)
    if fmt == "md":
        from tabulate import tabulate

        return tabulate(frame, headers="keys", tablefmt="github", showindex=False) + "\n"
    if fmt == "html":
        return frame.to_html(index=False, border=0)
    if fmt == "latex":
        from tabulate import tabulate

        return tabulate(frame, headers="keys", tablefmt="latex_booktabs", showindex=False) + "\n"
    return frame.to_csv(index=False)
