"""Headless-browser harness for tests of static pages opened from disk (``file://``), such as the
``adbench report`` site (issue 25). A helper module, not a test file.

What is installed where. The browser is the system Chromium from Debian's ``chromium`` and
``chromium-driver`` packages (``/usr/bin/chromium``; ``ADBENCH_CHROMIUM`` names another one),
driven by the Python ``playwright`` package (the ``dev`` extra) through ``executable_path``, so
playwright never downloads a browser of its own (``playwright install`` is never run). axe-core
comes from npm into a cache folder outside the repository, ``npm install --prefix
~/.cache/adbench-ci/npm axe-core@4``; its ``axe.min.js`` is found through ``ADBENCH_AXE_JS`` or
that default path. ``.ci/run`` installs all three when missing and sets
``ADBENCH_REQUIRE_BROWSER=1``: then a missing piece fails the test instead of skipping it.

Why the system browser and these flags. CI and the development machines reach package
registries only, not playwright's download host, and a distribution package is kept patched by
apt. The browser runs headless with a fresh temporary profile (playwright's default) and
``--no-sandbox`` (tests run as root in containers, where Chromium's sandbox cannot start),
``--disable-gpu`` (no GPU; software rendering gives stable screenshots), and the switches that
keep Chromium from phoning home on its own (``--disable-background-networking``,
``--disable-component-update``, ``--disable-sync``, ``--disable-quic``, ``--no-first-run``), so
every request a test sees comes from the page. Requests to anything but ``file:``, ``data:`` and
``blob:`` are recorded and then aborted (``block_foreign``), so a page that reaches for the
network fails its check at once instead of waiting on DNS. Chromium's own log lines (D-Bus,
GPU) go to its stderr, never to the page's console, so no console message is filtered here.

What a page opened from disk cannot do. Its origin is ``null``, so Chromium refuses with a CORS
console error (an issue here) ``fetch``/``XMLHttpRequest`` of another file and ``<script
type="module" src=...>``: a static report inlines its data (e.g. JSON in a ``<script
type="application/json">``) and loads classic scripts. ``run_axe`` turns off axe's stylesheet
preload for the same reason.

Typical use, one browser per test module::

    @pytest.fixture(scope="module")
    def browser():
        require_browser()
        with Browser() as b:
            yield b

    def test_page(browser, tmp_path):
        report = browser.open(tmp_path / "index.html")
        assert report.page_issues() == []
        assert report.foreign_requests() == []
        assert report.run_axe() == []
        report.screenshot(tmp_path / "index.png")
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the system browser (Debian's ``chromium`` package); ``ADBENCH_CHROMIUM`` overrides it
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: where ``.ci/run`` installs axe-core; ``ADBENCH_AXE_JS`` overrides it
DEFAULT_AXE_JS = Path.home() / ".cache" / "adbench-ci" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
#: set to 1 (CI does) to fail instead of skip when the browser, playwright or axe is missing
REQUIRE_ENV = "ADBENCH_REQUIRE_BROWSER"

#: Chromium switches on top of playwright's own defaults (which already disable extensions,
#: /dev/shm use, default apps and background networking)
LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
#: URL schemes a page opened from disk may load; any other request is foreign
LOCAL_SCHEMES = ("file:", "data:", "blob:")
#: console message types that count as an issue (``console.assert`` failures have type assert)
ISSUE_TYPES = ("warning", "error", "assert")
#: axe impacts that count as a violation
AXE_IMPACTS = ("serious", "critical")


def chromium_path() -> Path:
    return Path(os.environ.get("ADBENCH_CHROMIUM") or DEFAULT_CHROMIUM)


def axe_path() -> Path:
    return Path(os.environ.get("ADBENCH_AXE_JS") or DEFAULT_AXE_JS)


def missing(*, axe: bool = True) -> list[str]:
    """What keeps the browser tests from running, one line per missing piece (empty: none)."""
    reasons = []
    exe = chromium_path()
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        reasons.append(f"no Chromium at {exe} (apt-get install chromium chromium-driver, or set ADBENCH_CHROMIUM)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        reasons.append(f"playwright cannot be imported ({err}; pip install -e '.[dev]')")
    if axe and not axe_path().is_file():
        reasons.append(f"no axe-core at {axe_path()} (npm install --prefix ~/.cache/adbench-ci/npm axe-core@4, "
                       "or set ADBENCH_AXE_JS)")
    return reasons


def browser_available(*, axe: bool = True) -> bool:
    return not missing(axe=axe)


def require_browser(*, axe: bool = True) -> None:
    """Skip the calling test (or fixture) with the reason when something is missing; under
    ``ADBENCH_REQUIRE_BROWSER=1`` fail instead, since CI installs everything and must use it."""
    import pytest

    reasons = missing(axe=axe)
    if not reasons:
        return
    reason = "browser tests cannot run: " + "; ".join(reasons)
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def is_foreign(url: str) -> bool:
    return not url.startswith(LOCAL_SCHEMES)


@dataclass(frozen=True)
class ConsoleMessage:
    type: str  # playwright's type: log, debug, info, warning, error, assert, ...
    text: str
    location: str = ""  # url:line of the call, when Chromium gives one

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"console.{self.type}: {self.text}{where}"


@dataclass
class PageReport:
    """One opened page and what it did; the page stays open (for clicks, keys, ``evaluate``)
    until ``close()`` or the browser's exit. The lists keep filling while the page lives."""

    path: Path | None
    url: str
    page: Any  # playwright.sync_api.Page
    console: list[ConsoleMessage] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every request URL, in order
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    failed_requests: list[tuple[str, str]] = field(default_factory=list)  # (url, failure)

    def page_issues(self) -> list[str]:
        """Console messages of level warning or error, then uncaught page errors."""
        return page_issues(self)

    def foreign_requests(self) -> list[str]:
        """Request URLs whose scheme is not file:, data: or blob:."""
        return foreign_requests(self)

    def run_axe(self, *, impacts: tuple[str, ...] = AXE_IMPACTS) -> list[dict]:
        return run_axe(self.page, impacts=impacts)

    def screenshot(self, path: Path | str) -> Path:
        return screenshot(self.page, path)

    def close(self) -> None:
        if not self.page.is_closed():
            self.page.context.close()

    def __enter__(self) -> "PageReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def page_issues(report: PageReport) -> list[str]:
    issues = [str(m) for m in report.console if m.type in ISSUE_TYPES]
    return issues + [f"page error: {e}" for e in report.page_errors]


def foreign_requests(report: PageReport) -> list[str]:
    return [url for url in report.requests if is_foreign(url)]


def run_axe(page, *, impacts: tuple[str, ...] = AXE_IMPACTS, axe_js: Path | str | None = None) -> list[dict]:
    """axe-core's violations of the given impacts on the page as it is now: dicts with id,
    impact, help, helpUrl and targets (CSS selectors of the offending nodes). The script is
    injected inline from the local file, so it works on file:// pages with no network. axe's
    CSSOM preload is off: it fetches every linked stylesheet by XMLHttpRequest, which a file://
    page (origin null) refuses with a CORS console error and an axe warning, so the run itself
    would add page issues; the styles still apply, and the rules that read computed styles
    (colour contrast and the rest) still run."""
    axe_js = Path(axe_js) if axe_js else axe_path()
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(axe_js))
    result = page.evaluate("() => axe.run(document, {preload: false})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"], "helpUrl": v.get("helpUrl", ""),
             "targets": [", ".join(map(str, n["target"])) for n in v["nodes"]]}
            for v in result["violations"] if v.get("impact") in impacts]


def screenshot(page, path: Path | str) -> Path:
    """A full-page PNG of the page at ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


class Browser:
    """The system Chromium, headless, through playwright; a context manager. Each ``open`` gets
    a fresh browser context (no shared storage between pages)."""

    def __init__(self, *, executable: Path | str | None = None, viewport: tuple[int, int] = (1280, 900),
                 timeout_ms: int = 15_000, block_foreign: bool = True, extra_args: tuple[str, ...] = ()):
        self.executable = Path(executable) if executable else chromium_path()
        self.viewport = viewport
        self.timeout_ms = timeout_ms
        self.block_foreign = block_foreign
        self.args = [*LAUNCH_ARGS, *extra_args]
        self._playwright = None
        self._browser = None

    def start(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        if self._browser is None:
            self._playwright = sync_playwright().start()
            try:
                self._browser = self._playwright.chromium.launch(
                    executable_path=str(self.executable), headless=True, args=self.args,
                    chromium_sandbox=False, timeout=60_000)
            except BaseException:
                self._playwright.stop()
                self._playwright = None
                raise
        return self

    def close(self) -> None:
        if self._browser is not None:
            try:
                self._browser.close()
            finally:
                self._browser = None
                self._playwright.stop()
                self._playwright = None

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def version(self) -> str:
        return self.start()._browser.version

    def open(self, path: Path | str, *, wait_until: str = "load") -> PageReport:
        """Load ``path`` (a file, or any URL string with a scheme) and return its report once
        the page has loaded and drawn one frame."""
        self.start()
        if isinstance(path, Path) or "://" not in str(path):
            file = Path(path).resolve()
            url = file.as_uri()
        else:
            file, url = None, str(path)
        context = self._browser.new_context(viewport={"width": self.viewport[0], "height": self.viewport[1]},
                                            service_workers="block")
        context.set_default_timeout(self.timeout_ms)
        page = context.new_page()
        report = PageReport(path=file, url=url, page=page)
        page.on("console", lambda m: report.console.append(ConsoleMessage(m.type, m.text, _location(m))))
        page.on("pageerror", lambda e: report.page_errors.append(f"{e.name}: {e.message}" if e.name else str(e)))
        page.on("request", lambda r: report.requests.append(r.url))
        page.on("requestfailed", lambda r: report.failed_requests.append((r.url, r.failure or "")))
        page.on("websocket", lambda ws: report.requests.append(ws.url))
        if self.block_foreign:
            context.route(is_foreign, lambda route: route.abort("blockedbyclient"))
        try:
            page.goto(url, wait_until=wait_until)
            # one animation frame and a task: scripts run on load have drawn and logged
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))")
        except BaseException:
            context.close()
            raise
        return report


def _location(message) -> str:
    loc = message.location or {}
    url = loc.get("url", "")
    return f"{url}:{loc.get('lineNumber', 0) + 1}" if url else ""
