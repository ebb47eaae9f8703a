"""``adbench report`` (issue 25): the numbers the site shows and how it is written.

Every store here is made by ``adbench.results.generated`` (internally consistent records and
saved predictions), built once per module. What each page shows is re-derived independently:
the intervals from the ``.npz`` files with the project's bootstrap, the ranks and the Friedman
statistic from the records' JSON with scipy, the tie marks with ``bootstrap.compare_arrays``.
The browser checks (console, requests, charts, axe) are elsewhere; these tests read the HTML.
"""
from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from markupsafe import escape
from scipy.stats import friedmanchisquare, rankdata

from adbench.cli import main
from adbench.reporting import bootstrap
from adbench.reporting.site import build_report, ranking
from adbench.reporting.site.collect import Setting, collect
from adbench.reporting.site.intervals import PredictionCache, estimate
from adbench.results import predictions
from adbench.results.generated import GeneratedSetting, Plan, generate
from adbench.results.store import read_checked

DATASET = "gA"
CATEGORIES = [f"c{i}" for i in range(6)]
PAPER = ("m1", "m2", "m3", "m5")  # m5 covers 2 of 6 categories: not ranked
REDUCED = {"m4": "quick profile", "m6": "random weights"}
SMALL = dict(n_normal=8, n_anomalous=8, map_size=16)


def cats(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


# --- reading what was written ---------------------------------------------------------------
def read_records(root: Path) -> list[dict]:
    """Every record JSON under ``root`` (outside dot-folders), read directly, not by the store."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".json"):
                path = Path(folder) / name
                record = json.loads(path.read_text())
                record["_path"] = str(path)
                out.append(record)
    return out


def by_method(records: list[dict], dataset: str) -> dict[str, dict[str, list[dict]]]:
    """method -> category -> ok records (the generated methods are one setting each)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        if r["dataset"] == dataset and r["status"] == "ok":
            out.setdefault(r["method"], {}).setdefault(r["category"], []).append(r)
    return out


class _Rows(HTMLParser):
    """Table rows of an HTML fragment: each cell's tag, attributes, text and span texts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.row, self.cell, self.spans = [], None, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = {"tag": tag, "attrs": attrs, "text": "", "spans": {}}
        elif tag == "span" and self.cell is not None:
            self.spans.append(attrs.get("class", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.cell["text"] = " ".join(self.cell["text"].split())
            self.row.append(self.cell)
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.rows.append(self.row)
            self.row = None
        elif tag == "span" and self.spans:
            self.spans.pop()

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data
            if self.spans:
                key = self.spans[-1]
                self.cell["spans"][key] = self.cell["spans"].get(key, "") + data


def rows_of(fragment: str) -> list[list[dict]]:
    parser = _Rows()
    parser.feed(fragment)
    return parser.rows


def between(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i) + len(end)]


def leaderboard_rows(page: str, dataset: str, group: str) -> dict[str, dict[str, dict]]:
    """setting label -> column header -> cell, of one leaderboard group's table."""
    table = between(page, f'id="lb-{dataset}-{group}-table"', "</table>")
    rows = rows_of(table)
    header = [c["text"] for c in rows[0]]
    return {row[1]["attrs"]["data-value"]: dict(zip(header, row)) for row in rows[1:]}


def category_table(page: str, dataset: str, metric: str) -> tuple[list[str], list[list[dict]]]:
    """(column labels, body rows) of one per-category table."""
    section = between(page, f'id="table-{dataset}-{metric}"', "</section>")
    rows = rows_of(between(section, "<table", "</table>"))
    return [c["text"] for c in rows[0][1:]], [r for r in rows[1:] if r[0]["text"] != "mean"]


def group_html(page: str, dataset: str, group: str) -> str:
    """The part of a dataset page that belongs to one leaderboard group (up to the next one)."""
    start = page.index(f'<h3 id="lb-{dataset}-{group}">')
    ends = [i for i in (page.find("<h3 id=\"lb-", start + 10), page.find('<section aria-labelledby="cats-', start))
            if i != -1]
    return page[start:min(ends)]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- stores ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def main_store(tmp_path_factory) -> Path:
    """One dataset, 6 categories, one seed, saved predictions: m1-m3 paper budget, m5 paper
    budget on 2 categories only, m4 at a quick profile, m6 with random weights."""
    root = tmp_path_factory.mktemp("main") / "store"
    settings = [GeneratedSetting("m1", 0.5), GeneratedSetting("m2", 1.5), GeneratedSetting("m3", 2.0),
                GeneratedSetting("m4", 1.0, profile="quick"),
                GeneratedSetting("m6", 1.0, weights_source="random init")]
    generate(root, Plan(datasets={DATASET: CATEGORIES}, settings=settings, with_predictions=(DATASET,)))
    generate(root, Plan(datasets={DATASET: CATEGORIES[:2]}, settings=[GeneratedSetting("m5", 1.2)],
                        with_predictions=(DATASET,)))
    return root


@pytest.fixture(scope="module")
def main_site(main_store, tmp_path_factory) -> Path:
    return build_report(main_store, tmp_path_factory.mktemp("main_site") / "report")


@pytest.fixture(scope="module")
def main_page(main_site) -> str:
    return (main_site / f"{DATASET}.html").read_text()


@pytest.fixture(scope="module")
def main_single(main_store, tmp_path_factory) -> Path:
    return build_report(main_store, tmp_path_factory.mktemp("main_single") / "report.html", single_file=True)


@pytest.fixture(scope="module")
def main_records(main_store) -> dict[str, dict[str, list[dict]]]:
    return by_method(read_records(main_store), DATASET)


@pytest.fixture(scope="module")
def main_settings(main_store) -> dict[str, Setting]:
    return {s.label: s for s in collect(main_store).settings[DATASET]}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    """No saved predictions. ``five``: 5 categories x 3 settings; ``four``: 4 x 3; ``holes``:
    5 x 3 plus m4 on 3 of them (3 complete categories); ``two``: 5 x 2 settings x 3 seeds."""
    root = tmp_path_factory.mktemp("small") / "store"
    three = [GeneratedSetting("m1", 0.3), GeneratedSetting("m2", 1.2), GeneratedSetting("m3", 3.0)]
    generate(root, Plan(datasets={"five": cats(5), "four": cats(4), "holes": cats(5)}, settings=three, **SMALL))
    generate(root, Plan(datasets={"holes": cats(3)}, settings=[GeneratedSetting("m4", 2.0)], **SMALL))
    generate(root, Plan(datasets={"two": cats(5)}, settings=three[:2], seeds=(0, 1, 2), **SMALL))
    return root


@pytest.fixture(scope="module")
def small_site(small_store, tmp_path_factory) -> Path:
    return build_report(small_store, tmp_path_factory.mktemp("small_site") / "report")


def _record_arrays(records: dict[str, dict[str, list[dict]]], method: str, category: str) -> dict:
    (record,) = records[method][category]
    arrays = predictions.load(record)
    assert arrays is not None, f"{method}/{category} has no saved predictions"
    return arrays


# --- 1. numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["m1", "m3", "m5"])
def test_image_auroc_interval_is_the_projects_bootstrap(main_records, main_settings, main_page, method):
    """The leaderboard interval is ``mean_interval`` of the categories' stratified replicates."""
    draws = []
    for category in sorted(main_records[method]):
        arrays = _record_arrays(main_records, method, category)
        draws.append(bootstrap.image_auroc_replicates(arrays["scores"], arrays["labels"], n_boot=2000))
    expected = bootstrap.mean_interval(draws)
    got = estimate(main_settings[method], "image_auroc", PredictionCache())
    assert got.kind == "bootstrap"
    assert (got.value, got.low, got.high) == (expected.value, expected.low, expected.high)
    means = [float(r[0]["metrics"]["image_auroc"]) for r in main_records[method].values()]
    assert got.value == pytest.approx(np.mean(means), abs=1e-12)  # the recorded AUROC, again

    row = leaderboard_rows(main_page, DATASET, "paper")[method]
    cell = row["image AUROC"]
    assert cell["spans"]["value"] == f"{expected.value:.3f} [{expected.low:.3f}, {expected.high:.3f}]"
    assert cell["spans"]["covers"] == "95% bootstrap, test images"
    assert float(cell["attrs"]["data-value"]) == pytest.approx(expected.value, abs=1e-6)


def test_pixel_auroc_interval_is_the_projects_bootstrap(main_records, main_settings, main_page):
    method = "m2"
    draws = []
    for category in sorted(main_records[method]):
        arrays = _record_arrays(main_records, method, category)
        draws.append(bootstrap.pixel_auroc_replicates(arrays["maps"], arrays["masks"], n_boot=1000))
    expected = bootstrap.mean_interval(draws)
    got = estimate(main_settings[method], "pixel_auroc", PredictionCache())
    assert got.kind == "bootstrap"
    assert (got.value, got.low, got.high) == (expected.value, expected.low, expected.high)
    cell = leaderboard_rows(main_page, DATASET, "paper")[method]["pixel AUROC"]
    assert cell["spans"]["value"] == f"{expected.value:.3f} [{expected.low:.3f}, {expected.high:.3f}]"


def test_one_category_interval_equals_the_ci_of_that_category(main_records, main_settings):
    """With one category the mean interval is exactly ``image_auroc_ci`` / ``pixel_auroc_ci``."""
    whole = main_settings["m2"]
    category = "c3"
    one = Setting(key=whole.key, label=whole.label, slug=whole.slug,
                  records=[r for r in whole.records if r["category"] == category])
    arrays = _record_arrays(main_records, "m2", category)
    cache = PredictionCache()

    image = bootstrap.image_auroc_ci(arrays["scores"], arrays["labels"])
    got = estimate(one, "image_auroc", cache)
    assert (got.kind, got.value, got.low, got.high) == ("bootstrap", image.value, image.low, image.high)

    pixel = bootstrap.pixel_auroc_ci(arrays["maps"], arrays["masks"])
    got = estimate(one, "pixel_auroc", cache)
    assert (got.kind, got.value, got.low, got.high) == ("bootstrap", pixel.value, pixel.low, pixel.high)


def test_metric_without_bootstrap_says_it_has_no_interval(main_page, main_records):
    cell = leaderboard_rows(main_page, DATASET, "paper")["m1"]["AUPRO"]
    mean = np.mean([float(r[0]["metrics"]["aupro"]) for r in main_records["m1"].values()])
    assert cell["spans"]["value"] == f"{mean:.3f}"
    assert cell["spans"]["covers"].startswith("no interval")


@pytest.mark.parametrize("metric,column", [("image_auroc", "image AUROC"), ("aupro", "AUPRO")])
def test_several_seeds_give_mean_and_std_of_the_per_seed_means(small_store, small_site, metric, column):
    records = by_method(read_records(small_store), "two")
    page = (small_site / "two.html").read_text()
    rows = leaderboard_rows(page, "two", "paper")
    settings = {s.label: s for s in collect(small_store).settings["two"]}
    for method in ("m1", "m2"):
        cells = records[method]
        per_seed = [np.mean([next(r for r in cells[c] if r["seed"] == seed)["metrics"][metric] for c in sorted(cells)])
                    for seed in (0, 1, 2)]
        mean = np.mean([np.mean([r["metrics"][metric] for r in cells[c]]) for c in sorted(cells)])
        std = np.std(per_seed, ddof=1)
        got = estimate(settings[method], metric, PredictionCache())
        assert got.kind == "seeds"
        assert got.value == pytest.approx(mean, abs=1e-12)
        assert got.std == pytest.approx(std, abs=1e-12)
        cell = rows[method][column]
        assert cell["spans"]["value"] == f"{mean:.3f} ± {std:.3f}"
        assert cell["spans"]["covers"] == "± std over 3 seeds"


def test_seeds_covering_different_categories_give_no_interval(tmp_path):
    """A seed that failed in one category: no ± std (it would mix category difficulty into the
    seed spread), and the label must not claim a single seed."""
    root = tmp_path / "store"
    generate(root, Plan(datasets={"h": cats(3)}, settings=[GeneratedSetting("m1", 1.0)], seeds=(0, 1, 2), **SMALL))
    (path,) = root.rglob("c1__single__s2__*.json")
    record = json.loads(path.read_text())
    record.update(status="failed", error="RuntimeError: boom", metrics={})
    path.write_text(json.dumps(record))
    (setting,) = collect(root).settings["h"]
    records = by_method(read_records(root), "h")["m1"]
    for metric in ("image_auroc", "aupro"):
        got = estimate(setting, metric, PredictionCache())
        mean = np.mean([np.mean([r["metrics"][metric] for r in records[c]]) for c in sorted(records)])
        assert got.kind == "none" and got.std is None and got.low is None
        assert got.value == pytest.approx(mean, abs=1e-12)
        assert "one seed" not in got.covers and got.covers.startswith("no interval")


def _rank_matrix(records: dict[str, dict[str, list[dict]]], methods: list[str]) -> tuple[list[str], np.ndarray]:
    """Categories every method has, and their [category, method] mean image AUROC, from the JSON."""
    shared = sorted(set.intersection(*(set(records[m]) for m in methods)))
    matrix = np.array([[np.mean([r["metrics"]["image_auroc"] for r in records[m][c]]) for m in methods]
                       for c in shared])
    return shared, matrix


@pytest.mark.parametrize("group,methods", [("paper", ["m1", "m2", "m3"]), ("reduced", ["m4", "m6"])])
def test_average_ranks_equal_scipy_on_the_same_matrix(main_records, main_settings, main_page, group, methods):
    """Each budget group is ranked on its own: ranks within the group's settings only."""
    shared, matrix = _rank_matrix(main_records, methods)
    assert shared == CATEGORIES
    ranks = np.vstack([rankdata(-row, method="average") for row in matrix]).mean(axis=0)
    rows = leaderboard_rows(main_page, DATASET, group)
    assert sorted(rows) == sorted(methods + (["m5"] if group == "paper" else []))
    for method, expected in zip(methods, ranks):
        cell = rows[method]["avg rank"]
        assert float(cell["attrs"]["data-value"]) == pytest.approx(expected, abs=1e-6)
        assert cell["text"] == f"{expected:.2f}"
    ranked = ranking.rank([main_settings[m] for m in methods], "image_auroc", "x")
    assert [ranked.average_ranks[main_settings[m].slug] for m in methods] == pytest.approx(ranks, abs=1e-12)
    # positions follow the ranks within the group
    position = {m: int(rows[m]["#"]["text"]) for m in methods}
    by_position = [ranks[methods.index(m)] for m in sorted(methods, key=position.get)]
    assert by_position == sorted(by_position)


def test_friedman_statistic_equals_scipy_and_is_on_the_page(main_records, main_settings, main_page):
    methods = ["m1", "m2", "m3"]
    _, matrix = _rank_matrix(main_records, methods)
    statistic, p = friedmanchisquare(*matrix.T)
    ranked = ranking.rank([main_settings[m] for m in methods + ["m5"]], "image_auroc", "x")
    assert ranked.friedman == (float(statistic), float(p))
    np.testing.assert_array_equal(ranked.matrix, matrix)
    paper = group_html(main_page, DATASET, "paper")
    assert f"Friedman χ² = {statistic:.3f}," in paper
    assert f"p = {p:.3g}" in paper
    assert len(re.findall(r"Friedman χ² = ", main_page)) == 1  # the reduced group has 2 settings


def test_small_setting_is_listed_as_not_ranked(main_page):
    rows = leaderboard_rows(main_page, DATASET, "paper")
    assert rows["m5"]["avg rank"]["text"] == "not ranked"
    assert rows["m5"]["cats"]["text"] == "2"
    paper = group_html(main_page, DATASET, "paper")
    assert "Not ranked: m5 (covers 2 of 6 categories)" in paper
    figure = between(paper, '<figure class="cd"', "</figure>")
    names = {re.sub(r"\(\S+\)", "", t).strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", figure)}
    assert {"m1", "m2", "m3"} <= names and "m5" not in names  # marks read "m1 (1.2)" or "(3) m1"


def _cd_figures(page: str) -> list[str]:
    return re.findall(r'<figure class="cd".*?</figure>', page, flags=re.S)


def test_cd_diagram_drawn_with_enough_categories_and_settings(main_page, small_site):
    paper = group_html(main_page, DATASET, "paper")
    (figure,) = _cd_figures(paper)
    assert 'data-chart="cd"' in figure and 'data-points="3"' in figure
    assert figure.count('class="cd-mark"') == 3
    five = (small_site / "five.html").read_text()
    (figure,) = _cd_figures(five)
    assert 'data-points="3"' in figure and figure.count('class="cd-mark"') == 3
    assert "over 5 categories" in figure


@pytest.mark.parametrize("dataset,why", [
    ("four", "4 categories with a value for every setting; the diagram needs at least 5"),
    ("holes", "3 categories with a value for every setting (of 5: the others miss a setting's value); "
              "the diagram needs at least 5"),
    ("two", "2 ranked settings; the Friedman test needs at least 3"),
], ids=["four-categories", "missing-cells", "two-settings"])
def test_cd_diagram_not_drawn_and_the_page_says_why(small_site, dataset, why):
    page = (small_site / f"{dataset}.html").read_text()
    assert 'data-chart="cd"' not in page and "cd-mark" not in page and "Friedman χ²" not in page
    assert f"No critical-difference diagram: {escape(why)}." in page


def test_reduced_settings_carry_a_badge_and_are_ranked_apart(main_page):
    paper = leaderboard_rows(main_page, DATASET, "paper")
    reduced = leaderboard_rows(main_page, DATASET, "reduced")
    assert sorted(paper) == sorted(PAPER) and sorted(reduced) == sorted(REDUCED)
    for method, badge in REDUCED.items():
        assert reduced[method]["setting"]["text"] == f"{method} {badge}"
    for method in PAPER:
        assert paper[method]["setting"]["text"] == method
    table = between(main_page, f'id="lb-{DATASET}-paper-table"', "</table>")
    assert 'class="badge"' not in table
    assert {int(r["#"]["text"]) for r in reduced.values()} == {1, 2}  # positions restart in the group
    assert '<h3 id="lb-gA-paper">Paper budget' in main_page
    assert '<h3 id="lb-gA-reduced">Reduced budget or weights' in main_page


def test_category_table_marks_best_and_bootstrap_ties(main_records, main_page):
    labels, rows = category_table(main_page, DATASET, "image_auroc")
    assert labels == ["m1", "m2", "m3", "m4", "m5", "m6"]
    ties = separated = 0
    for row in rows:
        category, cells = row[0]["text"], row[1:]
        values = {m: (main_records[m][category][0]["metrics"]["image_auroc"] if category in main_records[m]
                      else None) for m in labels}
        best = max(v for v in values.values() if v is not None)
        winners = [m for m in labels if values[m] == best]
        for method, cell in zip(labels, cells):
            is_best = method in winners
            assert ("★" in cell["text"]) == is_best, (category, method, cell["text"])
            assert ("best" in cell["attrs"]["class"].split()) == is_best
            if values[method] is None:
                assert cell["text"] == "–" and "≈" not in cell["text"]
                continue
            assert float(cell["attrs"]["data-value"]) == pytest.approx(values[method], abs=1e-6)
            if is_best:
                assert "≈" not in cell["text"]
                continue
            comparison = bootstrap.compare_arrays(_record_arrays(main_records, winners[0], category),
                                                  _record_arrays(main_records, method, category), n_boot=2000)
            tie = comparison["low"] <= 0.0 <= comparison["high"]
            assert ("≈" in cell["text"]) == tie, (category, method, comparison)
            assert ("tie" in cell["attrs"]["class"].split()) == tie
            ties += tie
            separated += not tie
    assert ties and separated, "the store should have both ties and separated pairs"
    assert f"contains 0); {ties} such cell(s)." in between(main_page, 'id="table-gA-image_auroc"', "</section>")


# --- 2. byte-identical ----------------------------------------------------------------------
def test_same_records_give_identical_bytes(main_store, main_site, tmp_path):
    again = build_report(main_store, tmp_path / "again")
    first, second = tree(main_site), tree(again)
    assert sorted(first) == sorted(second)
    assert any(name.startswith("assets/gallery/") for name in first)
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_same_records_in_another_folder_give_identical_bytes(tmp_path):
    """A copy of the store elsewhere (another checkout) holds the same records: same site.
    Its saved predictions still name the same test images (they are part of the records)."""
    import shutil

    first = tmp_path / "a" / "results"
    generate(first, Plan(datasets={"gC": cats(2)}, settings=[GeneratedSetting("m1", 1.0), GeneratedSetting("m2", 2.0)],
                         with_predictions=("gC",), **SMALL))
    second = tmp_path / "b" / "results"
    shutil.copytree(first, second)
    one = tree(build_report(first, tmp_path / "one", command="adbench report"))
    two = tree(build_report(second, tmp_path / "two", command="adbench report"))
    assert any(name.startswith("assets/gallery/") for name in one)
    only_one, only_two = sorted(set(one) - set(two)), sorted(set(two) - set(one))
    assert (only_one, only_two) == ([], []), f"{len(only_one)} file(s) named differently, e.g. {only_one[:2]}"
    assert [name for name in one if one[name] != two[name]] == []


def test_default_out_rebuilt_by_the_command_is_identical(small_store, tmp_path):
    """``adbench report --results DIR`` writes ``DIR/report``; running it again changes no byte
    (the footer names the same command) and leaves nothing beside it."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(small_store, results)
    first = CliRunner().invoke(main, ["report", "--results", str(results), "--dataset", "five"])
    assert first.exit_code == 0, first.output
    before = tree(results / "report")
    assert "index.html" in before and "five.html" in before and "two.html" not in before
    again = CliRunner().invoke(main, ["report", "--results", str(results), "--dataset", "five"])
    assert again.exit_code == 0, again.output
    assert tree(results / "report") == before
    assert leftovers(results) == []


def test_same_records_give_identical_single_file(main_store, main_single, tmp_path):
    again = build_report(main_store, tmp_path / "again.html", single_file=True)
    assert again.read_bytes() == main_single.read_bytes()


# --- 3. single file -------------------------------------------------------------------------
def test_single_file_inlines_everything(main_single):
    from adbench.reporting.site.render import plotly_js

    assert sorted(p.name for p in main_single.parent.iterdir()) == ["report.html"]
    text = main_single.read_text()
    assert 'src="assets/' not in text and 'href="assets/' not in text
    images = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert images and all(src.startswith("data:image/") for src in images)
    assert re.search(r'class="gallery-overlay" src="data:image/jpeg;base64,', text)
    assert plotly_js().replace("</script", "<\\/script") in text
    for page in ("index", DATASET, f"{DATASET}-gallery"):
        assert f'id="page-{page}"' in text


# --- 4. atomic replace ----------------------------------------------------------------------
def test_existing_report_is_replaced_whole(small_store, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "stale.html").write_text("old report")
    build_report(small_store, out, ["five"])
    assert not (out / "stale.html").exists()
    assert (out / "index.html").is_file() and (out / "five.html").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["write_site", "gallery_page"])
def test_failed_build_leaves_the_previous_report(small_store, tmp_path, monkeypatch, where):
    from adbench.reporting.site import pages, render

    out = tmp_path / "site"
    build_report(small_store, out, ["five"])
    before = tree(out)

    def half_written(folder, files, thumbnails):
        (folder / "index.html").write_text("half")
        raise RuntimeError("disk gone")

    def broken_page(*args, **kwargs):
        raise RuntimeError("page broke")

    if where == "write_site":
        monkeypatch.setattr(render, "write_site", half_written)
    else:
        monkeypatch.setattr(pages, "gallery_page", broken_page)
    with pytest.raises(RuntimeError):
        build_report(small_store, out, ["five"])
    assert tree(out) == before
    assert leftovers(tmp_path) == []


def test_single_file_replaces_an_existing_file(small_store, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    build_report(small_store, out, ["five"], single_file=True)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


# --- 5. bad input ---------------------------------------------------------------------------
def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def _report(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def test_missing_results_folder(tmp_path):
    _one_line_error(_report("--results", str(tmp_path / "nope")), "--results", "nope")
    assert not (tmp_path / "nope").exists()


def test_empty_results_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_report("--results", str(empty)), "--results")
    assert list(empty.iterdir()) == []


def test_out_below_a_regular_file_fails_before_any_work(small_store, tmp_path, monkeypatch):
    from adbench.reporting.site import collect as collect_module

    def no_work(*args, **kwargs):
        raise AssertionError("records read before --out was checked")

    monkeypatch.setattr(collect_module, "collect", no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line_error(_report("--results", str(small_store), "--out", str(blocker / "site")), "--out")
    _one_line_error(_report("--results", str(small_store), "--out", str(blocker / "sub" / "r.html"),
                            "--single-file"), "--out")
    assert blocker.read_text() == "x"


def test_out_that_is_a_file_without_single_file(small_store, tmp_path):
    existing = tmp_path / "report"
    existing.write_text("x")
    _one_line_error(_report("--results", str(small_store), "--out", str(existing)), "--out", "--single-file")
    assert existing.read_text() == "x"


def test_single_file_out_that_is_a_folder(small_store, tmp_path):
    _one_line_error(_report("--results", str(small_store), "--out", str(tmp_path), "--single-file"), "--out")


@pytest.mark.parametrize("extra", [[], ["--dataset", "five"]])
def test_dataset_without_records(small_store, tmp_path, extra):
    out = tmp_path / "site"
    _one_line_error(_report("--results", str(small_store), "--out", str(out), *extra, "--dataset", "nosuch"),
                    "--dataset", "nosuch")
    assert not out.exists()


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """A small store with one tampered record (metric 7.5), one truncated record and one failed
    record, reported through the command line."""
    base = tmp_path_factory.mktemp("tampered")
    root = base / "store"
    generate(root, Plan(datasets={"gT": cats(3)}, settings=[GeneratedSetting("m1", 1.0), GeneratedSetting("m2", 2.0)],
                        **SMALL))
    files = {Path(r["_path"]).name.split("__")[0] + "/" + r["method"]: Path(r["_path"]) for r in read_records(root)}
    tampered_file, truncated_file, failed_file = files["c0/m1"], files["c1/m2"], files["c2/m1"]
    record = json.loads(tampered_file.read_text())
    record["metrics"]["image_auroc"] = 7.5
    tampered_file.write_text(json.dumps(record))
    truncated_file.write_text(truncated_file.read_text()[:200])
    record = json.loads(failed_file.read_text())
    record.update(status="failed", error="RuntimeError: CUDA out of memory (generated)", metrics={})
    failed_file.write_text(json.dumps(record))
    reasons = {}
    for path in (tampered_file, truncated_file):
        _, problem = read_checked(path)
        assert problem
        reasons[str(path.relative_to(root))] = (path, f"{problem}; skipped")
    out = base / "site"
    result = CliRunner().invoke(main, ["report", "--results", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return {"root": root, "out": out, "result": result, "reasons": reasons,
            "index": (out / "index.html").read_text(), "n_valid": 4}


def test_invalid_records_are_warned_and_listed(tampered):
    for path, reason in tampered["reasons"].values():
        assert f"warning: {path}: {reason}" in tampered["result"].stderr
    listing = between(tampered["index"], 'id="refused-records"', "</ul>")
    for relative, (_, reason) in tampered["reasons"].items():
        assert f"<li><code>{escape(relative)}</code>: {escape(reason)}</li>" in listing
    assert "metric image_auroc = 7.5 is outside [0, 1]" in listing
    assert "not valid JSON" in listing
    assert listing.count("<li>") == 2


def test_failed_record_shows_in_the_grid(tampered):
    rows = rows_of(between(tampered["index"], 'id="grid-table-gT"', "</table>"))
    header = [c["text"] for c in rows[0]]
    assert header == ["setting", "c0", "c1", "c2"]
    grid = {row[0]["text"]: {h: c["attrs"]["data-status"] for h, c in zip(header[1:], row[1:])} for row in rows[1:]}
    assert grid == {"m1": {"c0": "missing", "c1": "done", "c2": "failed"},
                    "m2": {"c0": "done", "c1": "missing", "c2": "done"}}
    provenance = json.loads(re.search(r'<script type="application/json" class="provenance-data">(.*?)</script>',
                                      tampered["index"], flags=re.S).group(1))
    failed = [e for e in provenance.values() if "failed attempts" in e]
    assert len(failed) == 1
    assert failed[0]["failed attempts"] == ["seed 0: RuntimeError: CUDA out of memory (generated)"]


# --- 6. environment and footer --------------------------------------------------------------
def test_overview_shows_environment_and_footer_names_the_command(tampered):
    from adbench.environment import versions

    index = tampered["index"]
    section = between(index, 'aria-label="software and hardware of the records"', "</table>")
    rows = rows_of(section)
    assert [c["text"] for c in rows[0]] == ["adbench", "commit", "torch", "device", "GPU", "CPU", "precision",
                                            "threads", "records"]
    assert [[c["text"] for c in row] for row in rows[1:]] == [
        ["generated", "unknown", "generated", "cpu", "none", "generated x2", "fp32", "2", str(tampered["n_valid"])]]
    weights = rows_of(between(index, 'aria-label="weights files of the records"', "</table>"))
    assert [c["text"] for c in weights[1]] == ["generated", "–", "weights dir generated.pth", str(tampered["n_valid"])]
    command = f"adbench report --results {tampered['root']} --out {tampered['out']}"
    footer = between(index, '<footer class="site-footer">', "</footer>")
    assert f"Made by <code>{escape(command)}</code> with adbench {escape(versions().get('adbench') or '?')}" in footer
    for page in tampered["out"].glob("*.html"):
        assert f"<code>{escape(command)}</code>" in page.read_text()
