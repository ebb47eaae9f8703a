"""The committed report (results/report/, written by scripts/make_results.sh) is exactly what the
committed records and the committed reporting code make: rebuilding it changes no byte (issue 25,
"Done when 4"). A change to the reporting code or to a record without rerunning
``scripts/make_results.sh`` fails here."""
from __future__ import annotations

from pathlib import Path

import pytest

from adbench.reporting.site import build_report
from adbench.reporting.site.render import reporting_commit

REPO = Path(__file__).resolve().parents[1]
COMMAND = "adbench report --results results --out results/report"  # scripts/make_results.sh


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rebuilding_the_committed_report_changes_no_byte(shared_data, tmp_path, monkeypatch):
    if reporting_commit().endswith("-dirty") or reporting_commit() == "unknown":
        pytest.skip(f"reporting code at {reporting_commit()}: the footer names a commit only for committed code")
    committed = REPO / "results" / "report"
    assert (committed / "index.html").is_file(), "results/report missing: run bash scripts/make_results.sh"
    monkeypatch.chdir(REPO)
    build_report("results", tmp_path / "report", command=COMMAND)
    built, kept = _files(tmp_path / "report"), _files(committed)
    assert sorted(built) == sorted(kept)
    changed = [name for name in built if built[name] != kept[name]]
    assert changed == [], f"rerun bash scripts/make_results.sh: {changed[:5]}"
    assert sum(len(b) for b in built.values()) <= 20 * 2**20  # committed only while at most 20 MB
