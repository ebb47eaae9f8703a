"""The headless-browser harness (tests/browser.py) catches what the report's browser tests rely
on it to catch (issue 25): console warnings and errors, uncaught errors, requests that leave the
disk, axe-core violations, and it writes full-page screenshots. Each test writes its own small
page to tmp_path; one browser serves the whole module."""
from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest

import browser as harness
from browser import Browser, require_browser

# a 1x1 transparent PNG, for local and data: images
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def write_page(folder: Path, body: str, *, name: str = "index.html", head: str = "") -> Path:
    """A complete page (language, title, landmark) so a clean body gives a clean axe run."""
    path = folder / name
    path.write_text(f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>harness test</title>{head}</head>
<body><main><h1>Harness test</h1>
{body}
</main></body>
</html>
""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def browser():
    require_browser()
    with Browser() as b:
        yield b


def test_clean_page_has_no_issues(browser, tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "dot.png").write_bytes(PIXEL)
    (tmp_path / "assets" / "style.css").write_text("main { max-width: 40em; }\n")
    (tmp_path / "assets" / "app.js").write_text("document.body.dataset.ready = 'yes';\n")
    data_uri = "data:image/png;base64," + base64.b64encode(PIXEL).decode()
    page = write_page(tmp_path, f"""
<p>A local image, a data: image and a blob: image, and a log line that is no issue.</p>
<img src="assets/dot.png" alt="local dot" width="16" height="16">
<img src="{data_uri}" alt="data dot" width="16" height="16">
<img id="blob" alt="blob dot" width="16" height="16">
<script src="assets/app.js"></script>
<script>
  console.log("drawn");
  console.info("info is no issue either");
  fetch("{data_uri}").then(r => r.blob()).then(b => {{
    document.getElementById("blob").src = URL.createObjectURL(b);
  }});
</script>""", head='<link rel="stylesheet" href="assets/style.css">')

    report = browser.open(page)
    report.page.wait_for_function("() => document.getElementById('blob').src.startsWith('blob:')")
    report.page.wait_for_load_state("networkidle")

    assert report.page_issues() == []
    assert report.foreign_requests() == []
    assert report.failed_requests == []
    assert report.run_axe() == []  # with the linked stylesheet: axe must not fetch it (CORS on file://)
    assert report.page.evaluate("document.body.dataset.ready") == "yes"
    assert [m.text for m in report.console] == ["drawn", "info is no issue either"]
    assert page.as_uri() in report.requests
    assert (tmp_path / "assets" / "dot.png").as_uri() in report.requests


def test_console_error_warning_and_uncaught_error_are_issues(browser, tmp_path):
    page = write_page(tmp_path, """
<script>
  console.error("boom");
  console.warn("careful");
  setTimeout(() => { throw new TypeError("late failure"); }, 0);
</script>""")

    report = browser.open(page)
    report.page.wait_for_timeout(50)
    issues = report.page_issues()

    assert any(i.startswith("console.error: boom") for i in issues), issues
    assert any(i.startswith("console.warning: careful") for i in issues), issues
    assert "page error: TypeError: late failure" in issues
    assert len(issues) == 3, issues


def test_request_off_the_disk_is_foreign(browser, tmp_path):
    page = write_page(tmp_path, """
<img src="http://example.invalid/x.png" alt="remote">
<script>fetch("https://example.invalid/data.json").catch(() => {});</script>""")

    report = browser.open(page)
    report.page.wait_for_load_state("networkidle")

    assert sorted(report.foreign_requests()) == ["http://example.invalid/x.png", "https://example.invalid/data.json"]
    # blocked, not sent: the failure is recorded and Chromium logs it as a console error
    assert {url for url, _ in report.failed_requests} == set(report.foreign_requests())
    assert any("Failed to load resource" in i for i in report.page_issues())


def test_fetch_and_module_scripts_from_disk_are_issues(browser, tmp_path):
    """A page opened from disk has origin null: reading another file by fetch, or loading a
    module script, fails with a CORS error, so a report must inline data and use classic
    scripts. The harness reports both."""
    (tmp_path / "data.json").write_text("{}")
    (tmp_path / "chart.js").write_text("document.body.dataset.module = 'ran';\n")
    page = write_page(tmp_path, """
<script type="module" src="chart.js"></script>
<script>fetch("data.json").catch(() => console.log("fetch refused"));</script>""")

    report = browser.open(page)
    report.page.wait_for_load_state("networkidle")

    cors = [i for i in report.page_issues() if "blocked by CORS policy" in i]
    assert len(cors) == 2 and any("data.json" in i for i in cors) and any("chart.js" in i for i in cors), cors
    assert report.page.evaluate("document.body.dataset.module") is None
    assert report.foreign_requests() == []  # both stayed on the disk: it is the loading that fails


def test_image_without_alt_is_a_critical_axe_violation(browser, tmp_path):
    (tmp_path / "dot.png").write_bytes(PIXEL)
    page = write_page(tmp_path, '<img src="dot.png" width="16" height="16">')

    violations = browser.open(page).run_axe()

    assert [(v["id"], v["impact"]) for v in violations] == [("image-alt", "critical")]
    assert violations[0]["targets"] == ["img"]


def test_full_page_screenshot_is_a_png(browser, tmp_path):
    page = write_page(tmp_path, '<div style="height: 2500px; background: #eee">tall</div>')

    shot = browser.open(page).screenshot(tmp_path / "shots" / "index.png")

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width == browser.viewport[0]
    assert height > 2500 > browser.viewport[1]  # the whole page, not the viewport


def test_missing_pieces_skip_or_fail_under_require(monkeypatch, tmp_path):
    monkeypatch.setenv("ADBENCH_AXE_JS", str(tmp_path / "no-axe.min.js"))
    monkeypatch.setenv("ADBENCH_CHROMIUM", str(tmp_path / "no-chromium"))
    assert not harness.browser_available()
    assert len(harness.missing()) >= 2

    monkeypatch.delenv(harness.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium at .*no-chromium.*no axe-core"):
        require_browser()

    monkeypatch.setenv(harness.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="ADBENCH_REQUIRE_BROWSER=1 but"):
        require_browser()
