"""The report's pages and what each shows: the overview, then per dataset its results page and
its gallery page. Each builder returns a ``render.Page`` whose context is plain data."""
from __future__ import annotations

from typing import Any, Optional

from adbench.reporting.site import category_tables, cost, gallery, leaderboard, overview, provenance, published
from adbench.reporting.site.intervals import PredictionCache
from adbench.reporting.site.render import Page, reporting_commit, script_json

#: environment table columns (overview)
ENV_KEYS = ("adbench", "commit", "torch", "device", "GPU", "CPU", "precision", "threads", "records")
#: cost table: record field and its format
COST_COLUMNS = (("image_auroc", "%.3f"), ("throughput", "%.3g"), ("fit_seconds", "%.1f"), ("peak_mb", "%.0f"),
                ("peak_cuda_mb", "%.0f"), ("params_m", "%.2f"), ("gflops", "%.2f"))


def make_pages(collection, single_file: bool, command: str, reference_dir=None):
    """(pages, context shared by every page, the gallery thumbnails)."""
    from adbench.environment import versions

    cache = PredictionCache()
    thumbs = gallery.Thumbnails(inline=single_file)
    reference = _reference(reference_dir)
    href = (lambda name: f"#page-{name}") if single_file else (lambda name: f"{name}.html")
    pages = [overview_page(collection, href)]
    for dataset in collection.datasets:
        pages.append(dataset_page(collection, dataset, cache, reference, href))
        pages.append(gallery_page(collection, dataset, cache, thumbs))
    shared = {
        "site_title": f"adbench report: {collection.root.name}",
        "results_name": collection.root.name,
        "footer": {"command": command, "version": versions().get("adbench") or "?", "commit": reporting_commit(),
                   "n_records": len(collection.records)},
    }
    return pages, shared, thumbs


def _reference(directory=None):
    """Published numbers (``directory``, default the checkout's), or None when there are none."""
    from adbench.errors import DataError
    from adbench.reporting import reference

    try:
        return reference.load(directory)
    except (DataError, OSError):
        return None


def _provenance_json(collection, datasets: list[str]) -> str:
    entries = {}
    for dataset in datasets:
        for setting in collection.settings[dataset]:
            for category in sorted({r["category"] for r in setting.records}):
                entries[provenance.provenance_id(dataset, setting, category)] = provenance.entry(
                    collection, dataset, setting, category)
    return script_json(entries)


def overview_page(collection, href) -> Page:
    grids = []
    for dataset in collection.datasets:
        grid = overview.grid(collection, dataset)
        grid["href"] = href(dataset)
        grids.append(grid)
    context = {"grids": grids, "refused": collection.refused, "moved_aside": collection.moved_aside,
               "n_records": len(collection.records), "environment": overview.environment(collection.records),
               "env_keys": list(ENV_KEYS), "provenance": _provenance_json(collection, collection.datasets)}
    return Page(name="index", title="Overview", template="overview.html.j2", context=context)


def dataset_page(collection, dataset: str, cache, reference, href) -> Page:
    settings = collection.settings[dataset]
    groups = leaderboard.leaderboard(dataset, settings, cache)
    for group in groups:
        group["chart"] = chart_block(group["chart"], f"chart-{group['id']}", "scatter",
                                     "Each dot is a setting's mean image AUROC; the whisker is its interval "
                                     "(± std over seeds or 95% bootstrap, as the table says; none: no whisker).")
    rows = cost.cost_rows(settings)
    charts = [chart_block(c, c["id"], "scatter", "Hover a marker for its setting. Marker area grows with peak "
                          "memory. Frontier settings: " + ", ".join(c["frontier"]) + ".")
              for c in cost.cost_charts(dataset, rows)]
    context = {
        "dataset": dataset, "settings": settings, "groups": groups,
        "main_metrics": list(leaderboard.MAIN_METRICS), "extra_metrics": list(leaderboard.EXTRA_METRICS),
        "metric_names": leaderboard.METRIC_NAMES,
        "tables": category_tables.category_tables(dataset, settings, collection.categories(dataset), cache),
        "published": published.published(collection.records, dataset, reference),
        "cost_rows": rows, "cost_charts": charts, "cost_columns": COST_COLUMNS,
        "gallery_href": href(f"{dataset}-gallery"),
        "provenance": _provenance_json(collection, [dataset]),
    }
    return Page(name=dataset, title=dataset, template="dataset.html.j2", context=context)


def gallery_page(collection, dataset: str, cache, thumbs) -> Page:
    galleries, without = [], []
    for setting in collection.settings[dataset]:
        found = False
        for category in setting.categories:
            g = gallery.gallery(setting, category, cache, thumbs)
            if g is not None:
                galleries.append(g)
                found = True
        if not found and setting.ok:
            without.append(setting.label)
    context = {"dataset": dataset, "galleries": galleries, "without": without}
    return Page(name=f"{dataset}-gallery", title=f"{dataset} galleries", template="gallery.html.j2", context=context)


def chart_block(chart: Optional[dict[str, Any]], element_id: str, kind: str, caption: str) -> Optional[dict[str, Any]]:
    """What the chart macro needs: id, kind, the number of marks, alt text, caption, JSON."""
    if chart is None:
        return None
    title = chart["layout"]["title"]["text"]
    return {"id": element_id, "kind": kind, "points": chart["points"], "caption": caption,
            "alt": f"chart: {title}; the same numbers are in the table above",
            "json": script_json({"data": chart["data"], "layout": chart["layout"]})}
