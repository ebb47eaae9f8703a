"""The leaderboard of one dataset: a row per method setting, ranked within its budget tier.

Settings made at a ``quick`` profile, or with random or fallback weights, say nothing about a
method at its paper budget; they carry a badge and are ranked in their own group, never above or
below a paper-budget result. Within a group the rows are ordered by average rank over the shared
categories on image AUROC (``ranking``), then by the mean.

Each mean is over the setting's own categories; the ``categories`` column says how many, so a
mean over 3 categories is never read as one over 15.
"""
from __future__ import annotations

from typing import Any

from adbench.reporting.site import charts, ranking
from adbench.reporting.site.intervals import estimate

#: always shown
MAIN_METRICS = ("image_auroc", "pixel_auroc", "aupro")
#: shown when the reader selects them
EXTRA_METRICS = ("image_f1_max", "image_ap", "pixel_f1_max", "pixel_ap")
RANK_METRIC = "image_auroc"
METRIC_NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO",
                "image_f1_max": "image F1-max", "image_ap": "image AP", "pixel_f1_max": "pixel F1-max",
                "pixel_ap": "pixel AP", "pixel_auroc_anomalous": "pixel AUROC (anomalous images)"}
PAPER, REDUCED = "paper budget", "reduced budget or weights"


def leaderboard(dataset: str, settings: list, cache) -> list[dict[str, Any]]:
    """The groups of one dataset (full training sets first, then each k-shot K; paper budget
    before reduced), each with rows, ranking and charts: a 1-shot result is never ranked
    against a full-shot one."""
    groups = []
    for shots in sorted({s.shots for s in settings}):
        for tier in (PAPER, REDUCED):
            members = [s for s in settings if s.shots == shots and (not s.badges()) == (tier == PAPER)]
            if members:
                groups.append(_group(dataset, tier, shots, members, cache))
    return groups


def _group(dataset: str, tier: str, shots: int, settings: list, cache) -> dict[str, Any]:
    slug = ("paper" if tier == PAPER else "reduced") + (f"-{shots}shot" if shots else "")
    name = tier + (f", {shots}-shot" if shots else "")
    ranked = ranking.rank(settings, RANK_METRIC, element_id=f"cd-{dataset}-{slug}")
    rows = [_row(s, ranked, cache) for s in settings]
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] if r["rank"] is not None else 0.0,
                             -(r["estimates"][RANK_METRIC].value or 0.0), r["label"]))
    for position, row in enumerate(rows, 1):
        row["position"] = position
    chart_rows = [{"label": r["label"], "estimate": r["estimates"][RANK_METRIC]} for r in rows]
    return {
        "name": name, "id": f"lb-{dataset}-{slug}", "rows": rows, "ranking": ranked,
        "chart": charts.interval_chart(chart_rows, METRIC_NAMES[RANK_METRIC],
                                       f"{dataset}, {name}: mean image AUROC with its interval"),
        "rank_note": _rank_note(ranked),
    }


def _row(setting, ranked, cache) -> dict[str, Any]:
    estimates = {m: estimate(setting, m, cache) for m in MAIN_METRICS + EXTRA_METRICS}
    return {
        "label": setting.label, "slug": setting.slug, "badges": setting.badges(),
        "categories": len(setting.categories), "seeds": len(setting.seeds),
        "estimates": estimates, "rank": ranked.average_ranks.get(setting.slug),
    }


def _rank_note(ranked) -> str:
    if not ranked.categories:
        return "No average rank: no category has a value for every setting."
    text = (f"Average rank over the {ranking.plural(len(ranked.categories), 'category', 'categories')} "
            f"every ranked setting has "
            f"(1 = best image AUROC in a category, ties share the mean rank).")
    if ranked.excluded:
        text += " Not ranked: " + "; ".join(f"{label} ({why})" for label, why in ranked.excluded) + "."
    return text
