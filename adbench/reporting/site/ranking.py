"""Ranks across categories and the critical-difference diagram (Demsar, JMLR 2006).

Each category is a block: settings are ranked within it (1 = best, ties share the mean rank,
``scipy.stats.rankdata``), and the average rank over categories says who wins *across*
categories rather than on the mean of their scores. The Friedman test
(``scipy.stats.friedmanchisquare``) asks whether the ranks differ at all; the Nemenyi post-hoc
test (``scikit_posthocs.posthoc_nemenyi_friedman``) which pairs do, and
``scikit_posthocs.critical_difference_diagram`` draws them: settings on a rank axis, bars
joining those the test cannot tell apart.

Both tests need complete blocks: a category counts only when every ranked setting has a value
there. A setting covering fewer than half of the categories is left out of the ranking (named,
with its coverage) rather than emptying the blocks of every other one. The diagram is drawn
only with at least ``MIN_CATEGORIES`` complete categories and ``MIN_SETTINGS`` settings
(Friedman's chi-square approximation is poor below that); otherwise the page says why.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MIN_CATEGORIES = 5
MIN_SETTINGS = 3
ALPHA = 0.05


@dataclass
class Ranking:
    settings: list  # the ranked settings (collect.Setting), in matrix column order
    categories: list[str]  # complete blocks, matrix row order
    matrix: np.ndarray  # [categories, settings] metric values
    average_ranks: dict[str, float] = field(default_factory=dict)  # slug -> rank
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (label, why)
    friedman: Optional[tuple[float, float]] = None  # (statistic, p)
    cd_svg: Optional[str] = None
    why_not: Optional[str] = None  # why no diagram


def rank(settings: list, metric: str, element_id: str) -> Ranking:
    """Average ranks of ``settings`` on ``metric``, Friedman, Nemenyi and the diagram."""
    means = {s.slug: s.category_means(metric) for s in settings}
    union = sorted({c for m in means.values() for c in m})
    kept, excluded = [], []
    for s in settings:
        if len(means[s.slug]) * 2 < len(union):
            excluded.append((s.label, f"covers {len(means[s.slug])} of {len(union)} categories"))
        else:
            kept.append(s)
    complete = [c for c in union if all(c in means[s.slug] for s in kept)]
    matrix = np.array([[means[s.slug][c] for s in kept] for c in complete], dtype=np.float64).reshape(
        len(complete), len(kept))
    result = Ranking(settings=kept, categories=complete, matrix=matrix, excluded=excluded)
    if complete and kept:
        ranks = rank_matrix(matrix)
        result.average_ranks = {s.slug: float(ranks[:, j].mean()) for j, s in enumerate(kept)}
    result.why_not = _why_no_diagram(len(complete), len(kept), len(union))
    if result.why_not is None:
        _test_and_draw(result, element_id)
    return result


def rank_matrix(matrix: np.ndarray) -> np.ndarray:
    """Rank within each row, 1 = highest value, ties averaged."""
    from scipy.stats import rankdata

    return np.vstack([rankdata(-row, method="average") for row in matrix]) if len(matrix) else matrix


def _why_no_diagram(n_complete: int, n_settings: int, n_union: int) -> Optional[str]:
    if n_settings < MIN_SETTINGS:
        return f"{plural(n_settings, 'ranked setting')}; the Friedman test needs at least {MIN_SETTINGS}"
    if n_complete < MIN_CATEGORIES:
        missing = "" if n_complete == n_union else f" (of {n_union}: the others miss a setting's value)"
        return (f"{plural(n_complete, 'category', 'categories')} with a value for every setting{missing}; "
                f"the diagram needs at least {MIN_CATEGORIES}")
    return None


def plural(n: int, word: str, words: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _test_and_draw(result: Ranking, element_id: str) -> None:
    from scipy.stats import friedmanchisquare

    statistic, p = friedmanchisquare(*result.matrix.T)
    if not (math.isfinite(statistic) and math.isfinite(p)):
        result.why_not = "every setting ties on every category: the Friedman test is undefined"
        return
    result.friedman = (float(statistic), float(p))
    result.cd_svg = cd_diagram_svg(result, element_id)


def cd_diagram_svg(result: Ranking, element_id: str) -> str:
    """The diagram as inline SVG, byte-stable (fixed hash salt, no date), ids prefixed with
    ``element_id`` so two diagrams on one page do not collide; each setting's mark carries
    ``class="cd-mark"`` so a test can count them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scikit_posthocs as sp

    labels = [s.label for s in result.settings]
    p_values = sp.posthoc_nemenyi_friedman(result.matrix)
    p_values.index = p_values.columns = labels
    ranks = pd.Series([result.average_ranks[s.slug] for s in result.settings], index=labels)
    with plt.rc_context({"svg.hashsalt": "adbench-report", "svg.fonttype": "none", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.28 * len(labels)))
        sp.critical_difference_diagram(ranks, p_values, ax=ax, alpha=ALPHA,
                                       color_palette=_palette(labels))
        for i, collection in enumerate(ax.collections):
            collection.set_gid(f"cd-mark-{i}")
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
    return _inline_svg(buffer.getvalue(), element_id)


def _palette(labels: list[str]) -> dict[str, str]:
    """Okabe-Ito colours (colour-blind safe), cycled; labels also name each mark."""
    from adbench.reporting.site.charts import OKABE_ITO

    return {label: OKABE_ITO[i % len(OKABE_ITO)] for i, label in enumerate(labels)}


def _inline_svg(text: str, prefix: str) -> str:
    text = text[text.index("<svg"):]
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", text)
    text = re.sub(r'<g id="' + re.escape(prefix) + r'-cd-mark-(\d+)"', r'<g class="cd-mark" id="' + prefix
                  + r'-cd-mark-\1"', text)
    return text.replace("<svg ", '<svg role="img" aria-label="critical-difference diagram" ', 1)
