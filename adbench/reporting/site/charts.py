"""Chart specifications for the page's plotly.js (bundled in ``assets/``, never a CDN).

A chart is a plain dict ``{"data": [...], "layout": {...}}`` written into the page as JSON and
drawn by ``assets/report.js``; its container says how many marks it must draw
(``data-points``), which the browser test counts. Colours are the Okabe-Ito palette (Okabe &
Ito 2008, distinguishable under the common colour-vision deficiencies), and every trace also
differs by marker symbol or label, never by colour alone.
"""
from __future__ import annotations

from typing import Any, Optional

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#222"}


def base_layout(title: str, x_title: str, y_title: str, height: int = 380, log_x: bool = False) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "font": FONT,
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
        "xaxis": {"title": {"text": x_title}, "type": "log" if log_x else "linear", "zeroline": False},
        "yaxis": {"title": {"text": y_title}, "zeroline": False, "automargin": True},
        "showlegend": False,
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
        "hovermode": "closest",
    }


def interval_chart(rows: list[dict[str, Any]], metric: str, title: str) -> Optional[dict[str, Any]]:
    """Dot-and-whisker of each setting's mean with its interval (rows with a value only)."""
    rows = [r for r in rows if r["estimate"].value is not None]
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["estimate"].value)
    est = [r["estimate"] for r in rows]
    plus = [(e.high - e.value) if e.kind == "bootstrap" else (e.std or 0.0) for e in est]
    minus = [(e.value - e.low) if e.kind == "bootstrap" else (e.std or 0.0) for e in est]
    trace = {
        "type": "scatter", "mode": "markers", "x": [round(e.value, 6) for e in est],
        "y": [r["label"] for r in rows],
        "error_x": {"type": "data", "symmetric": False, "array": [round(v, 6) for v in plus],
                    "arrayminus": [round(v, 6) for v in minus], "color": "#444", "thickness": 1.5},
        "marker": {"color": OKABE_ITO[0], "size": 9, "symbol": "circle"},
        "text": [f"{r['label']}: {r['estimate'].text()} ({r['estimate'].covers})" for r in rows],
        "hoverinfo": "text",
    }
    layout = base_layout(title, metric, "", height=max(220, 60 + 28 * len(rows)))
    return {"data": [trace], "layout": layout, "points": len(rows)}


def pareto_front(points: list[tuple[float, float]], higher_x_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y: higher better), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0] if higher_x_better else points[i][0],
                                                      -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def cost_chart(rows: list[dict[str, Any]], x_key: str, x_title: str, higher_x_better: bool,
               title: str) -> Optional[dict[str, Any]]:
    """Image AUROC against one cost axis, marker area from peak memory, Pareto frontier as a line."""
    rows = [r for r in rows if r.get(x_key) and r.get("image_auroc") is not None]
    if not rows:
        return None
    points = [(float(r[x_key]), float(r["image_auroc"])) for r in rows]
    front = sorted(pareto_front(points, higher_x_better), key=lambda i: points[i][0])
    memory = [float(r.get("peak_mb") or 0.0) for r in rows]
    top = max(memory) or 1.0
    scatter = {
        "type": "scatter", "mode": "markers+text", "x": [p[0] for p in points], "y": [p[1] for p in points],
        "textposition": "top center", "textfont": {"size": 10},
        "marker": {"size": [8 + 22 * (m / top) ** 0.5 for m in memory], "color": OKABE_ITO[0], "opacity": 0.75,
                   "line": {"color": "#000", "width": 1}},
        "text": [r["label"].split(" ")[0] for r in rows],
        "hovertext": [f"{r['label']}<br>{x_title}: {r[x_key]:.3g}<br>image AUROC {r['image_auroc']:.3f}"
                      f"<br>peak memory {r.get('peak_mb') or 0:.0f} MB" for r in rows],
        "hoverinfo": "text", "name": "settings",
    }
    frontier = {"type": "scatter", "mode": "lines", "x": [points[i][0] for i in front],
                "y": [points[i][1] for i in front], "line": {"color": OKABE_ITO[5], "dash": "dash", "width": 2},
                "hoverinfo": "skip", "name": "Pareto frontier"}
    layout = base_layout(title, x_title + " (log)", "mean image AUROC", log_x=True)
    return {"data": [frontier, scatter], "layout": layout, "points": len(rows),
            "frontier": [rows[i]["label"] for i in front]}
