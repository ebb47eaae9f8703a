"""Which published number (``results/reference/*.csv``) a record may stand next to, and why.

Issue 25, section 4: the versus-published table paired each of our settings with *every*
published setting of its method, so a quick CutPaste 3-way record stood next to CutPaste's
binary, binary-scar and 3-way rows (CutPaste Table 1) and both EfficientNet-B4 rows (Table 3).
A reader then cannot tell a reproduction gap from a different method. Here a record is paired
only with rows that agree on what the method *is*, and everything else is named.

Two kinds of setting keys, both columns of the reference CSVs (``reference.SETTING_COLUMNS``):

* identity keys (``IDENTITY_KEYS``: ``mode``, ``protocol``, ``shots``). They change the detector
  itself: the proxy task (CutPaste binary / scar / 3way, Table 1 and Table 5 of seed 003;
  ToCoAD's anomaly generator, Table 7 of seed 002), one model for all categories against one per
  category (UniAD's ``unified``), or K training images against the full training set (issue 26:
  AnomalyDINO's 1-shot numbers; an empty ``shots`` cell is the full training set). A row pairs with a record only if both agree, with dataset, category,
  metric and method.
* named keys (``NAMED_KEYS``: backbone, weights, image size, budget, seeds). They change how
  well the same method was run. A paired row lists each one that differs ("backbone: ours
  tf_efficientnet_lite0, paper resnet18"); an empty CSV cell means the source does not state it,
  and then nothing is claimed either way.

When no row agrees on the identity keys, the pair says so (``reference is None``) and shows
the *closest* row (fewest identity keys apart, then fewest named differences) with the keys
that differ (``mismatched``): never a silent mismatch, never a number put next to ours as if
it were the same thing. Only ``main`` rows (plus ``ablation`` ones when asked) are ever paired
or shown as closest; ``unverified`` and ``test_selected`` rows never are (see ``reference``).

Means follow the earlier table: our mean over our categories is compared with the paper's mean
over the same categories (computed from its per-category values, ``kind="mean_of_ours"``), and
with the paper's published all-category mean only when we cover at least
``PAPER_MEAN_MIN_CATEGORIES`` categories (``kind="paper_mean"``): a mean over 1 category is not a
mean over 15.

This module reads records and frames only; ``reference`` (the CSV files) and the HTML report
build on it, so it imports neither.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

SETTING_COLUMNS = ("mode", "protocol", "shots", "backbone", "weights", "image_size", "budget", "seeds")
IDENTITY_KEYS = ("mode", "protocol", "shots")
NAMED_KEYS = ("backbone", "weights", "image_size", "budget", "seeds")
NAMED_LABELS = {"backbone": "backbone", "weights": "weights", "image_size": "image size", "budget": "budget",
                "seeds": "seeds"}
PROTOCOLS = ("single", "unified")
WEIGHTS = ("imagenet", "scratch")
PAPER_MEAN = "mean"
GROUP_MEANS = ("texture_mean", "object_mean")  # published per-kind means; never paired (no such rows of ours)
MEAN_CATEGORIES = (PAPER_MEAN,) + GROUP_MEANS
PAPER_MEAN_MIN_CATEGORIES = 5
KINDS = ("category", "mean_of_ours", "paper_mean")

#: method -> (config key that says which variant of the method it is, its default). From the
#: method files: cutpaste.py / cutpaste_patch.py ``mode`` (proxy task, seed 003 Tables 1, 4, 5),
#: tocoad.py ``generator`` (anomaly generator, seed 002 Table 7), autoencoder.py ``loss``
#: (AE-L2 and AE-SSIM are two methods in MVTec AD's own paper). Other methods have one variant.
MODE_KEYS: dict[str, tuple[str, str]] = {
    "cutpaste": ("mode", "3way"),
    "cutpaste_patch": ("mode", "3way"),
    "tocoad": ("generator", "perlin"),
    "autoencoder": ("loss", "l2"),
}
IMAGENET_TAG = re.compile(r"(^|[._])(in1k|in12k|in21k|in22k|in22ft1k|imagenet)")


@dataclass(frozen=True)
class Pair:
    """One of our numbers and what it is compared with.

    ``reference`` is the published row (a dict of its CSV columns) that agrees on dataset,
    category, metric, method, mode and protocol, or None. Then ``closest`` is the published row
    nearest to our setting (None when the method has no usable row for this category/metric)
    and ``mismatched`` names the identity keys it differs in: a caller shows it as "closest",
    never as our number's counterpart. ``differences`` names what else differs from the row
    shown (the reference, else the closest). ``kind`` says what ``category == "mean"`` means
    (``mean_of_ours``: the paper's values averaged over our categories, the dict then carries
    ``mean_of``; ``paper_mean``: the paper's printed all-category mean).
    """

    dataset: str
    category: str
    metric: str
    method: str
    setting_label: str
    ours: float
    n_seeds: int
    reference: Optional[dict[str, Any]]
    closest: Optional[dict[str, Any]]
    differences: tuple[str, ...]
    mismatched: tuple[str, ...]
    kind: str = "category"
    n_categories: int = 1
    our_fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shown(self) -> Optional[dict[str, Any]]:
        """The published row this pair shows: the reference, else the closest, else None."""
        return self.reference if self.reference is not None else self.closest


# --------------------------------------------------------------------------------------------
# Reference rows
# --------------------------------------------------------------------------------------------
def roles_of(frame: pd.DataFrame) -> pd.Series:
    """The ``role`` of each row: the column's value, ``main`` where the column or the value is absent
    (the older CSVs have no ``role`` column: all their rows are headline numbers)."""
    if "role" not in frame.columns:
        return pd.Series("main", index=frame.index)
    return frame["role"].fillna("").astype(str).str.strip().replace("", "main")


def compared_roles(include_ablation: bool = False) -> tuple[str, ...]:
    """The roles put next to our numbers: ``main``, plus ``ablation`` when asked. Never
    ``unverified`` (maybe another metric) or ``test_selected`` (chosen on the test set)."""
    return ("main", "ablation") if include_ablation else ("main",)


def cell_text(value: Any) -> str:
    """A CSV cell (or config value) as stripped text; NaN and None are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def as_int(value: Any) -> Optional[int]:
    """A CSV cell as a positive int, None when empty or not a whole number (``validate`` says so)."""
    text = cell_text(value)
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and number > 0 else None


def paper_setting_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The setting of a published row, read from its structured columns (empty where absent).

    An empty ``protocol`` reads as ``single``: every published number is per category unless
    the CSV says ``unified``, as every record without a protocol is (``tables.long_frame``)."""
    return {"mode": cell_text(row.get("mode")).lower(),
            "protocol": cell_text(row.get("protocol")).lower() or "single",
            "shots": str(as_int(row.get("shots")) or ""),
            "backbone": cell_text(row.get("backbone")),
            "weights": cell_text(row.get("weights")).lower(),
            "image_size": as_int(row.get("image_size")),
            "budget": cell_text(row.get("budget")),
            "seeds": as_int(row.get("seeds"))}


def _compared_rows(reference: pd.DataFrame, include_ablation: bool) -> pd.DataFrame:
    """Rows that may be paired (by role), with every setting column present."""
    frame = reference[roles_of(reference).isin(compared_roles(include_ablation))].copy()
    for column in SETTING_COLUMNS:
        if column not in frame.columns:
            frame[column] = ""
    return frame


# --------------------------------------------------------------------------------------------
# Our side
# --------------------------------------------------------------------------------------------
def our_mode(method: str, config: Mapping[str, Any]) -> str:
    """The variant of ``method`` a config runs, in the CSVs' ``mode`` vocabulary.

    The base is the method's mode key (``MODE_KEYS``). Qualifiers join with ``+`` where a config
    switch makes another detector that a paper reports apart: CutPaste's GDE on EfficientNet
    level-N features (``3way+level7``, seed 003 Table 3) and its N-model ensemble
    (``3way+ensemble5``, Table 1 "Ensemble"); ToCoAD without its training stages
    (``perlin+stages=none`` is PatchCore, ``perlin+stages=ncl`` has no DNP; seed 002 Table 5)."""
    if method not in MODE_KEYS:
        return ""
    key, default = MODE_KEYS[method]
    parts = [cell_text(config.get(key, default)).lower() or default]
    if method in ("cutpaste", "cutpaste_patch"):
        level = cell_text(config.get("feature_level", "pool")) or "pool"
        if level != "pool":
            parts.append(level)
        members = as_int(config.get("ensemble")) or 1
        if members > 1:
            parts.append(f"ensemble{members}")
    if method == "tocoad":
        stages = cell_text(config.get("stages", "both")) or "both"
        if stages != "both":
            parts.append(f"stages={stages}")
    return "+".join(parts)


def our_backbone(config: Mapping[str, Any]) -> str:
    """The timm architecture name without its pretrained tag (``tf_efficientnet_lite0.in1k`` ->
    ``tf_efficientnet_lite0``): the CSVs name architectures; weights are their own key."""
    return cell_text(config.get("backbone")).split(".")[0]


def our_weights(record: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """``imagenet``, ``scratch`` (trained from random init by design, or no pretrained network),
    ``random`` (pretrained weights wanted but random ones used: ``--weights random`` or a
    fallback, adbench.weights), or the exact tag when it names no ImageNet weights."""
    tag = cell_text(record.get("weights_tag"))
    source = cell_text(record.get("weights_source")).lower()
    if source.startswith("random"):
        return "random"
    if source == "from scratch" or tag == "none" or (not tag and config.get("pretrained") is False):
        return "scratch"
    if tag == "random":
        return "random"
    if tag and IMAGENET_TAG.search(tag.split(".", 1)[-1].lower()):
        return "imagenet"
    return tag


def our_image_size(config: Mapping[str, Any]) -> Optional[int]:
    """The side the network sees: the crop when there is one (resize 256 / crop 224 is 224, as
    the CSVs count PatchCore's and ToCoAD's input), else the resize."""
    return as_int(config.get("crop_size")) or as_int(config.get("image_size"))


def our_budget(config: Mapping[str, Any]) -> str:
    """Training length in the CSVs' words: ``A+B epochs`` for two stages (CutPaste's head-only +
    full phases, seed 003 A.4; ToCoAD's DNP + NCL, seed 002 Sec. 4.1), ``of N steps`` where an
    epoch is a fixed step count (CutPaste: 256 steps), caps in brackets; empty without training."""
    if "dnp_epochs" in config:
        return _tocoad_budget(config)
    if as_int(config.get("iterations")):  # Dinomaly counts optimiser steps (its None: the protocol's default)
        return f"{as_int(config['iterations'])} iterations"
    epochs = as_int(config.get("epochs"))
    if epochs is None:
        return ""
    head = as_int(config.get("head_only_epochs"))
    text = f"{head}+{epochs} epochs" if head else f"{epochs} epochs"
    if as_int(config.get("steps_per_epoch")):
        text += f" of {as_int(config['steps_per_epoch'])} steps"
    if as_int(config.get("max_steps")):
        text += f" (at most {as_int(config['max_steps'])} steps)"
    return text


def _tocoad_budget(config: Mapping[str, Any]) -> str:
    """ToCoAD's ``DNP+NCL epochs``; a stage that ``stages`` skips counts 0, no stage at all is empty."""
    stages = cell_text(config.get("stages", "both")) or "both"
    if stages == "none":
        return ""
    dnp = (as_int(config.get("dnp_epochs")) or 0) if stages == "both" else 0
    text = f"{dnp}+{as_int(config.get('ncl_epochs')) or 0} epochs"
    if as_int(config.get("steps_per_epoch")):
        text += f" (at most {as_int(config['steps_per_epoch'])} steps per epoch)"
    return text


def our_setting_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """Our record's setting in the reference CSVs' terms, so both sides compare key by key:
    ``mode``, ``protocol``, ``backbone``, ``weights`` ('imagenet' / 'scratch' / 'random' / tag),
    ``image_size`` and ``budget``. Seed-independent: seeds are counted per group in ``match``."""
    config = record.get("config") or {}
    return {"mode": our_mode(cell_text(record.get("method")), config),
            "protocol": cell_text(record.get("protocol")).lower() or "single",
            "shots": str(as_int(record.get("shots")) or ""),
            "backbone": our_backbone(config),
            "weights": our_weights(record, config),
            "image_size": our_image_size(config),
            "budget": our_budget(config)}


def setting_label(record: Mapping[str, Any]) -> str:
    """A short text naming our setting: what tells two columns of ``adbench table`` apart
    (mode, backbone, weights tag, profile, protocol, geometry, precision when not fp32)."""
    config = record.get("config") or {}
    mode = our_mode(cell_text(record.get("method")), config)
    parts = [f"mode {mode}"] if mode else []
    parts += [f"backbone {config.get('backbone', '-')}",
              f"weights {our_setting_fields(record).get('weights') or 'default'}",
              f"profile {record.get('profile')}",
              f"protocol {record.get('protocol') or 'single'}",
              f"geometry {record.get('geometry')}"]
    if (record.get("precision") or "fp32") != "fp32":
        parts.append(f"precision {record['precision']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Comparing one setting with one row
# --------------------------------------------------------------------------------------------
def mismatched_keys(ours: Mapping[str, Any], paper: Mapping[str, Any]) -> tuple[str, ...]:
    """The identity keys (mode, protocol, shots) on which our setting and a published one differ."""
    return tuple(k for k in IDENTITY_KEYS if (ours.get(k) or "") != (paper.get(k) or ""))


def named_differences(ours: Mapping[str, Any], n_seeds: int, paper: Mapping[str, Any]) -> tuple[str, ...]:
    """"backbone: ours X, paper Y"-style texts for each named key known on both sides that differs."""
    mine = {**ours, "seeds": n_seeds}
    out = []
    for key in NAMED_KEYS:
        a, b = mine.get(key), paper.get(key)
        if a in (None, "") or b in (None, "") or str(a) == str(b):
            continue
        out.append(f"{NAMED_LABELS[key]}: ours {a}, paper {b}")
    return tuple(out)


def _closest(ours: Mapping[str, Any], n_seeds: int, rows: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The row fewest identity keys away, then with the fewest named differences (ties: by
    source and setting text, so the choice is reproducible)."""
    def rank(row):
        paper = paper_setting_fields(row)
        return (len(mismatched_keys(ours, paper)), len(named_differences(ours, n_seeds, paper)),
                str(row.get("source")), str(row.get("setting")))
    return min(rows, key=rank) if rows else None


def _pairs_for(base: dict[str, Any], rows: list[dict[str, Any]], ours: Mapping[str, Any],
               n_seeds: int) -> list[Pair]:
    """Every row that agrees on the identity keys as a Pair, or one Pair showing the closest row."""
    matched = [r for r in rows if not mismatched_keys(ours, paper_setting_fields(r))]
    if matched:
        ranked = sorted(matched, key=lambda r: (len(named_differences(ours, n_seeds, paper_setting_fields(r))),
                                                str(r.get("source")), str(r.get("setting"))))
        return [Pair(**base, reference=r, closest=None, mismatched=(),
                     differences=named_differences(ours, n_seeds, paper_setting_fields(r))) for r in ranked]
    near = _closest(ours, n_seeds, rows)
    if near is None:
        return [Pair(**base, reference=None, closest=None, differences=(), mismatched=())]
    paper = paper_setting_fields(near)
    return [Pair(**base, reference=None, closest=near, mismatched=mismatched_keys(ours, paper),
                 differences=named_differences(ours, n_seeds, paper))]


# --------------------------------------------------------------------------------------------
# Our groups
# --------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """One of our settings on one dataset: its label, fields and values per category over seeds."""
    dataset: str
    method: str
    label: str
    fields: dict[str, Any]
    values: dict[str, list[float]] = field(default_factory=dict)


def _groups(records: list[Mapping[str, Any]], metric: str) -> list[_Group]:
    """Our settings with a value of ``metric``. Records of one setting (same label, same config
    hash) are seeds of it; two configs under one label get the hash in their labels, so seeds of
    different configs are never averaged together (as ``tables`` keeps them apart)."""
    by_key: dict[tuple, _Group] = {}
    hashes: dict[tuple, set] = defaultdict(set)
    for r in records:
        value = (r.get("metrics") or {}).get(metric)
        if value is None:
            continue
        label = setting_label(r)
        key = (r["dataset"], r["method"], label, r.get("config_hash"))
        hashes[key[:3]].add(r.get("config_hash"))
        group = by_key.setdefault(key, _Group(r["dataset"], r["method"], label, our_setting_fields(r)))
        group.values.setdefault(r["category"], []).append(float(value))
    for (ds, method, label, config_hash), group in by_key.items():
        if len(hashes[(ds, method, label)]) > 1:
            group.label = f"{label}, cfg {str(config_hash)[:8]}"
    return sorted(by_key.values(), key=lambda g: (g.dataset, g.method, g.label))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _group_pairs(group: _Group, metric: str, rows: list[dict[str, Any]]) -> list[Pair]:
    """The Pairs of one of our settings for one metric: each category, then the means."""
    means = {c: _mean(v) for c, v in group.values.items()}
    cats = sorted(means)
    base = dict(dataset=group.dataset, metric=metric, method=group.method, setting_label=group.label,
                our_fields=group.fields)
    pairs = []
    for cat in cats:
        n = len(group.values[cat])
        pairs += _pairs_for({**base, "category": cat, "ours": means[cat], "n_seeds": n},
                            [r for r in rows if r["category"] == cat], group.fields, n)
    if len(cats) > 1:
        mean_base = {**base, "category": PAPER_MEAN, "ours": _mean(means.values()), "n_categories": len(cats),
                     "n_seeds": min(len(v) for v in group.values.values())}
        same = _same_category_means(rows, cats)
        if same:
            pairs += _pairs_for({**mean_base, "kind": "mean_of_ours"}, same, group.fields, mean_base["n_seeds"])
        published = [r for r in rows if r["category"] == PAPER_MEAN]
        if published and len(cats) >= PAPER_MEAN_MIN_CATEGORIES:
            pairs += _pairs_for({**mean_base, "kind": "paper_mean"}, published, group.fields, mean_base["n_seeds"])
    return pairs


def _same_category_means(rows: list[dict[str, Any]], cats: list[str]) -> list[dict[str, Any]]:
    """Per published setting (source, setting) that has every one of our categories: a row with
    its mean over exactly those categories (``mean_of`` lists them), comparable with ours."""
    by_setting: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_setting[(str(r["source"]), str(r["setting"]))][r["category"]] = r
    out = []
    for _, per_cat in sorted(by_setting.items()):
        if all(c in per_cat for c in cats):
            first = per_cat[cats[0]]
            out.append({**first, "category": PAPER_MEAN, "value": _mean(per_cat[c]["value"] for c in cats),
                        "mean_of": tuple(cats)})
    return out


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------
def _ok_records(records: Iterable[Mapping[str, Any]], dataset: Optional[str]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("status") == "ok" and (dataset is None or r.get("dataset") == dataset)]


def match(records: Iterable[Mapping[str, Any]], reference: pd.DataFrame, metrics: Iterable[str],
          dataset: Optional[str] = None, include_ablation: bool = False) -> list[Pair]:
    """Our settings (groups of seeds) against published rows, one Pair per number shown.

    A group is paired only with rows of the same dataset, category, metric, method, mode and
    protocol; without one, its Pair has ``reference=None`` and shows the closest row of that
    dataset/category/metric/method (or none when there is none). Every group with a value gets
    its Pairs, so a method without published numbers says so instead of vanishing. Order:
    dataset, metric (as given), method, setting label, then categories and means."""
    ok, metrics = _ok_records(records, dataset), list(metrics)  # metrics: read once per dataset
    ref = _compared_rows(reference, include_ablation)
    pairs: list[Pair] = []
    for ds in sorted({r["dataset"] for r in ok}):
        for metric in metrics:
            here = ref[(ref["dataset"] == ds) & (ref["metric"] == metric)]
            rows_of = {m: g.to_dict("records") for m, g in here.groupby("method", sort=True)}
            for group in _groups([r for r in ok if r["dataset"] == ds], metric):
                pairs += _group_pairs(group, metric, rows_of.get(group.method, []))
    return pairs


def row_identity(row: Mapping[str, Any]) -> tuple:
    """What identifies a published row across frames (the CSVs' duplicate key)."""
    return tuple(str(row.get(k)) for k in ("method", "dataset", "category", "metric", "source", "setting"))


def uncovered(records: Iterable[Mapping[str, Any]], reference: pd.DataFrame, metrics: Iterable[str],
              dataset: Optional[str] = None) -> pd.DataFrame:
    """Published ``main`` rows of ``metrics`` (of ``dataset``, or of every dataset) that no Pair
    of ``match`` uses as its reference: what our records do not cover yet.

    Texture and object means are left out: ``match`` never pairs them (our tables have no such
    split), so listing them would promise a coverage no run can give."""
    metrics = list(metrics)
    used = {row_identity(p.reference) for p in match(records, reference, metrics, dataset)
            if p.reference is not None and p.kind != "mean_of_ours"}
    main = _compared_rows(reference, include_ablation=False)
    main = main[main["metric"].isin(metrics) & ~main["category"].isin(GROUP_MEANS)]
    if dataset is not None:
        main = main[main["dataset"] == dataset]
    keep = [row_identity(r) not in used for r in main.to_dict("records")]
    columns = ["method", "dataset", "category", "metric", "mode", "protocol", "value", "source", "setting"]
    out = main.loc[keep, columns].copy()
    out["protocol"] = out["protocol"].map(lambda p: cell_text(p).lower() or "single")
    out = out.sort_values(["dataset", "method", "source", "setting", "metric", "category"], kind="stable")
    return out.reset_index(drop=True)
