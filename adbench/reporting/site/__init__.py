"""``adbench report``: a static site a lab can open from disk, trust and share.

Built from the stored records alone (``collect``): an overview of the grid that was run
(``overview``), per dataset a leaderboard with intervals and ranks (``leaderboard``,
``intervals``, ``ranking``), per-category tables with provenance (``category_tables``,
``provenance``), our numbers versus published ones matched by setting (``published``), cost
(``cost``), and galleries of the hardest test images (``gallery``); ``render`` writes it.

The site is written into a temporary sibling folder and renamed into place, so a reader never
opens half a report; the previous report, if any, is replaced only once the new one is complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from adbench.errors import ConfigError, DataError
from adbench.files import write_atomic, writable_folder

def default_out(results: Path, single_file: bool) -> Path:
    return results / ("report.html" if single_file else "report")


def check_arguments(results: Path, out: Path, single_file: bool) -> None:
    """Bad input, before any work: a missing results folder, an ``--out`` whose parent cannot be
    written, an ``--out`` of the wrong kind (a file for the site folder, a folder for one file)."""
    if not results.is_dir():
        raise DataError(f"--results {results}: no such folder")
    parent, why = writable_folder(out.parent)
    if parent is None:
        raise ConfigError(f"--out {out}: {why}")
    if out.exists() and single_file and out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; --single-file writes one HTML file")
    if out.exists() and not single_file and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder (use --single-file for one HTML file)")
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(f"--out {out}: not writable")


def build_report(results: str | Path, out: Optional[str | Path] = None, datasets: Optional[list[str]] = None,
                 single_file: bool = False, command: str = "adbench report",
                 reference_dir: Optional[str | Path] = None) -> Path:
    """Write the report; returns the path of the site folder (or of the single HTML file)."""
    from adbench.reporting.site.collect import collect
    from adbench.reporting.site.pages import make_pages
    from adbench.reporting.site.render import render_pages, write_site

    results = Path(results)
    out = Path(out) if out else default_out(results, single_file)
    check_arguments(results, out, single_file)
    collection = collect(results, datasets or None)
    if not collection.records:
        where = f" for --dataset {', '.join(datasets)}" if datasets else ""
        raise DataError(f"--results {results}: no valid record{where}")
    for name in datasets or []:
        if name not in collection.settings:
            raise DataError(f"--dataset {name}: no records of that dataset under {results}")
    pages, shared, thumbs = make_pages(collection, single_file, command, reference_dir)
    files = render_pages(pages, shared, single_file)
    if single_file:
        text = files["report.html"].encode("utf-8")
        write_atomic(out, lambda fh: fh.write(text))
        return out
    return _replace_folder(out, lambda tmp: write_site(tmp, files, thumbs.files))


def _replace_folder(out: Path, write) -> Path:
    """Write into ``<out>.tmp-<pid>``, then swap it in place of ``out``."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():  # put the previous report back: a reader keeps a whole one
                os.replace(old, out)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out
