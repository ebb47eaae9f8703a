"""``adbench report`` opened in a real browser (issue 25, "Done when 1").

A small generated store (adbench.results.generated: 6 categories, 4 settings of which one at a
quick profile, saved predictions) plus one failed and one tampered record is turned into a
report by the CLI; every page is opened from disk in headless Chromium (tests/browser.py) and
must: log no warning or error; request nothing but file:, data: and blob: URLs; draw one mark
per data point in every chart; sort a table by value on a header click and on Enter; show
gallery images at least 64 px wide whose overlay differs from the raw image; pass axe-core with
no serious or critical violation; open a cell's provenance on click and on keyboard focus. The
overview lists the failed and the tampered record. A screenshot of each page is saved to the
test's temporary folder (``tmp_path_factory``'s ``report-shots``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adbench.cli import main
from adbench.results.generated import GeneratedSetting, Plan, generate
from browser import Browser, require_browser

SETTINGS = [GeneratedSetting("alpha", 0.6), GeneratedSetting("beta", 1.5), GeneratedSetting("gamma", 2.5),
            GeneratedSetting("delta", 2.0, profile="quick")]
DATASET = "gen0"


def _store(root: Path) -> Path:
    plan = Plan(datasets={DATASET: [f"cat{i}" for i in range(7)]}, settings=SETTINGS, seeds=(0,),
                with_predictions=(DATASET,), n_normal=8, n_anomalous=8, map_size=32)
    generate(root, plan)
    folder = root / DATASET / "alpha"
    tampered = sorted(folder.glob("cat1__*.json"))[0]
    record = json.loads(tampered.read_text())
    record["metrics"]["image_auroc"] = 7.5  # not a rate: the store's checks refuse it
    tampered.write_text(json.dumps(record))
    failed = sorted((root / DATASET / "beta").glob("cat2__*.json"))[0]
    record = json.loads(failed.read_text())
    record.update(status="failed", error="RuntimeError: out of memory (generated failure)", predictions=None)
    failed.write_text(json.dumps(record))
    failed.with_suffix(".npz").unlink()
    return tampered


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-store")
    tampered = _store(root)
    out = root / "report"
    result = CliRunner().invoke(main, ["report", "--results", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    single = root / "single.html"
    result = CliRunner().invoke(main, ["report", "--results", str(root), "--out", str(single), "--single-file"])
    assert result.exit_code == 0, result.output
    return {"out": out, "single": single, "tampered": tampered, "shots": tmp_path_factory.mktemp("report-shots")}


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with Browser() as b:
        yield b


def _pages(site) -> list[Path]:
    pages = sorted(site["out"].glob("*.html"))
    assert {p.name for p in pages} == {"index.html", f"{DATASET}.html", f"{DATASET}-gallery.html"}
    return pages


def _open_drawn(browser, path: Path):
    report = browser.open(path)
    # charts draw on load; wait until every plotly container holds its SVG
    report.page.wait_for_function(
        "() => [...document.querySelectorAll('[data-chart=\"scatter\"]')].every(e => e.querySelector('.main-svg'))")
    return report


def test_every_page_is_clean(browser, site):
    for path in _pages(site) + [site["single"]]:
        report = _open_drawn(browser, path)
        try:
            report.screenshot(site["shots"] / f"{path.stem}.png")
            assert report.page_issues() == [], path.name
            assert report.foreign_requests() == [], path.name
            violations = report.run_axe()
            assert violations == [], (path.name, [(v["id"], v["impact"], v["targets"][:3]) for v in violations])
            assert (site["shots"] / f"{path.stem}.png").stat().st_size > 10_000
        finally:
            report.close()


def test_every_chart_draws_one_mark_per_point(browser, site):
    counted = 0
    for path in _pages(site):
        report = _open_drawn(browser, path)
        try:
            charts = report.page.evaluate("""() => [...document.querySelectorAll('[data-chart]')].map(e => ({
                id: e.id || e.querySelector('svg')?.id || '', kind: e.dataset.chart, points: +e.dataset.points,
                marks: e.dataset.chart === 'cd' ? e.querySelectorAll('.cd-mark').length
                     : e.querySelectorAll('.scatterlayer .trace .points path').length}))""")
        finally:
            report.close()
        for chart in charts:
            assert chart["points"] > 0, chart
            assert chart["marks"] == chart["points"], chart
            counted += 1
    # leaderboard interval charts (2 groups), the CD diagram (paper group: 3 settings, 5 complete categories)
    # and two cost charts
    assert counted >= 5


def _column_values(page, table_id: str, col: int) -> list[float]:
    return page.evaluate(f"""() => [...document.getElementById('{table_id}').tBodies[0].rows]
        .map(r => r.children[{col}].dataset.value).filter(v => v !== '' && v !== undefined).map(Number)""")


def test_headers_sort_by_click_and_by_enter(browser, site):
    report = _open_drawn(browser, site["out"] / f"{DATASET}.html")
    page = report.page
    try:
        table_id = page.evaluate("() => document.querySelector('section.one-of:not([hidden]) table').id || "
                                 "(document.querySelector('section.one-of:not([hidden]) table').id = 'cats-under-test')")
        for col, how in ((1, "click"), (3, "enter"), (1, "click")):
            button = page.locator(f"#{table_id} thead button.sort[data-col='{col}']")
            if how == "click":
                button.click()
            else:
                button.focus()
                page.keyboard.press("Enter")
            order = page.evaluate(f"() => document.querySelector('#{table_id} thead button.sort[data-col=\"{col}\"]')"
                                  ".closest('th').getAttribute('aria-sort')")
            values = _column_values(page, table_id, col)
            assert len(values) >= 4
            expected = sorted(values, reverse=(order == "descending"))
            assert values == expected, (how, order, values)
        # the leaderboard sorts too (a text column, ascending first)
        page.locator("#lb-gen0-paper-table thead button.sort[data-col='1']").click()
        labels = page.evaluate("() => [...document.getElementById('lb-gen0-paper-table').tBodies[0].rows]"
                               ".map(r => r.children[1].dataset.value)")
        assert labels == sorted(labels)
    finally:
        report.close()


def test_gallery_images_are_wide_enough_and_overlays_differ(browser, site):
    from PIL import Image

    report = _open_drawn(browser, site["out"] / f"{DATASET}-gallery.html")
    try:
        images = report.page.evaluate("""() => [...document.querySelectorAll('.gallery-table tr')].filter(r => r.querySelector('img'))
            .map(r => ({raw: r.querySelector('img.gallery-raw'), overlay: r.querySelector('img.gallery-overlay')}))
            .map(p => ({raw: p.raw.getAttribute('src'), overlay: p.overlay.getAttribute('src'),
                        widths: [p.raw.naturalWidth, p.overlay.naturalWidth, p.raw.getBoundingClientRect().width,
                                 p.overlay.getBoundingClientRect().width], alt: p.overlay.alt}))""")
    finally:
        report.close()
    assert len(images) >= 6 * 3 * 2  # categories with predictions x settings x >= 2 samples
    for pair in images:
        assert min(pair["widths"]) >= 64, pair
        assert pair["alt"]
        raw = np.asarray(Image.open(site["out"] / pair["raw"]).convert("RGB"), np.float32)
        overlay = np.asarray(Image.open(site["out"] / pair["overlay"]).convert("RGB"), np.float32)
        assert raw.shape == overlay.shape
        assert np.abs(raw - overlay).mean() > 5.0, pair


def test_overview_lists_failed_and_tampered_records(browser, site):
    report = _open_drawn(browser, site["out"] / "index.html")
    page = report.page
    try:
        refused = page.inner_text("#refused-records")
        assert site["tampered"].name in refused and "outside [0, 1]" in refused
        failed = page.locator("td[data-status='failed']")
        assert failed.count() == 1
        failed.click()
        panel = page.locator("#provenance")
        assert panel.is_visible()
        assert "out of memory" in panel.inner_text()
    finally:
        report.close()


def test_provenance_opens_on_click_and_on_keyboard_focus(browser, site):
    report = _open_drawn(browser, site["out"] / f"{DATASET}.html")
    page = report.page
    try:
        assert not page.locator("#provenance").is_visible()
        cells = page.locator("section.one-of:not([hidden]) td[data-prov]")
        cells.nth(0).click()
        text = page.inner_text("#provenance")
        for field in ("config hash", "weights", "seeds", "precision", "device", "fit seconds", "record files"):
            assert field in text
        page.keyboard.press("Escape")
        assert not page.locator("#provenance").is_visible()
        cells.nth(1).focus()  # keyboard focus alone, no pointer
        assert page.locator("#provenance").is_visible()
        assert "cat" in page.inner_text("#provenance")
    finally:
        report.close()
