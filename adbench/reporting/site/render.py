"""Turning page contexts into files: Jinja2 templates, bundled assets, byte-stable output.

Pages are rendered with the templates of ``templates/`` (autoescaped; only our own generated
markup, the SVG diagram and JSON blobs, is marked safe). The multi-page site links
``assets/report.css``, ``assets/report.js`` and plotly.js copied from the installed plotly
package (its ``package_data/plotly.min.js``), so it opens from disk with no network. The
single-file form inlines all three and the gallery thumbnails (data: URIs) into one HTML file,
each page a section of it.

Byte stability: no timestamps, fixed element ids, JSON with sorted keys, thumbnails named by a
hash of what they show. The footer names the last commit that changed the reporting code
(``git log -- adbench/reporting``), not HEAD: the page's bytes depend on that code and on the
records, so a committed report changes only when one of them does.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets"


@dataclass
class Page:
    name: str  # file stem and section id
    title: str
    template: str
    context: dict[str, Any]

    @property
    def href(self) -> str:
        return f"{self.name}.html"


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=jinja2.select_autoescape(["j2", "html"]),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=False, lstrip_blocks=False)
    return env


def script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</`` can close the tag)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("</", "<\\/")


def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def reporting_commit() -> str:
    """Last commit touching ``adbench/reporting`` (+ ``-dirty`` when those files are modified),
    or ``unknown`` outside a git checkout."""
    repo = HERE.parents[2]
    try:
        log = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h", "--", "adbench/reporting"],
                             capture_output=True, text=True, timeout=10)
        if log.returncode != 0 or not log.stdout.strip():
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "adbench/reporting"],
                               capture_output=True, text=True, timeout=10)
        return log.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def render_pages(pages: list[Page], shared: dict[str, Any], single: bool) -> dict[str, str]:
    """File name -> HTML text. Multi-page: one file per page; single: one file of sections."""
    env = environment()
    bodies = {p.name: env.get_template(p.template).render(**shared, **p.context) for p in pages}
    layout = env.get_template("layout.html.j2")
    extra = {}
    if single:
        extra = {"css": (ASSETS / "report.css").read_text(), "report_js": (ASSETS / "report.js").read_text(),
                 "plotly_js": plotly_js().replace("</script", "<\\/script")}
        nav = [{"href": f"#page-{p.name}", "title": p.title, "current": False} for p in pages]
        sections = [{"name": p.name, "body": bodies[p.name]} for p in pages]
        return {"report.html": layout.render(**shared, **extra, single=True, nav=nav, pages=sections,
                                             title=shared["site_title"])}
    out = {}
    for page in pages:
        nav = [{"href": p.href, "title": p.title, "current": p.name == page.name} for p in pages]
        out[page.href] = layout.render(**shared, single=False, nav=nav, title=f"{page.title} · {shared['site_title']}",
                                       pages=[{"name": page.name, "body": bodies[page.name]}])
    return out


def write_site(folder: Path, files: dict[str, str], thumbnails: dict[str, bytes]) -> None:
    """The multi-page site into ``folder`` (which must be new and empty)."""
    (folder / "assets" / "gallery").mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    for name in ("report.css", "report.js"):
        (folder / "assets" / name).write_bytes((ASSETS / name).read_bytes())
    (folder / "assets" / "plotly.min.js").write_text(plotly_js(), encoding="utf-8")
    for name, data in sorted(thumbnails.items()):
        (folder / "assets" / "gallery" / name).write_bytes(data)
