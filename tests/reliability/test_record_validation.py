"""Reliability: records are checked when read, in every command (issue 14, cases 2 and 12).

A store is filled by one real run (two ok records with saved predictions), then damaged by
hand the ways the audit found: a metric stored as a string, a metric of 7.5, ``metrics`` as a
list, a record without ``category``, a truncated and an empty record, a ``predictions`` path
that leaves the folder, a truncated ``.npz``. Every command must keep working on the valid
records (exit 0 for ``table`` and ``plot``), warn once per bad file naming it and the reason,
and never open a file outside the store.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import adbench_testkit
from adbench.cli import main
from adbench.results.checks import problem_of


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    kit = adbench_testkit.make_kit_data(tmp / "data", categories=("obj_b", "tex_a"))
    results = tmp / "res"
    result = CliRunner().invoke(main, ["run", "--plugin", "adbench_testkit", "--method", "kit_mean",
                                       "--dataset", "kitgen", "--data-root", str(kit), "--results", str(results),
                                       "-q", "--save-predictions"])
    assert result.exit_code == 0, result.output
    return kit, results


def _damaged(store, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A copy of the store with one good record per category plus one bad file per case."""
    kit, clean = store
    results = tmp_path / "res"
    shutil.copytree(clean, results)
    folder = next(results.rglob("*.json")).parent
    good = json.loads(next(folder.glob("obj_b__*.json")).read_text())

    def bad(name: str, mutate) -> str:
        record = json.loads(json.dumps(good))
        record["record_name"] = name
        record["category"] = name.split("__")[0]
        text = mutate(record)
        (folder / name).write_text(text if isinstance(text, str) else json.dumps(record))
        return name

    cases = {
        bad("c_str__single__s0__x.json", lambda r: r["metrics"].update(image_auroc="0.99")): "is str '0.99', not a number",
        bad("c_big__single__s0__x.json", lambda r: r["metrics"].update(image_auroc=7.5)): "image_auroc = 7.5 is outside [0, 1]",
        bad("c_list__single__s0__x.json", lambda r: r.update(metrics=[0.9])): "'metrics' is list, not an object",
        bad("c_nocat__single__s0__x.json", lambda r: r.pop("category") and None): "missing 'category'",
        bad("c_escape__single__s0__x.json", lambda r: r.update(predictions="../../../../etc/passwd")):
            "predictions '../../../../etc/passwd' leaves the record's folder",
        bad("c_trunc__single__s0__x.json", lambda r: json.dumps(r)[:120]): "not valid JSON (truncated?)",
        bad("c_empty__single__s0__x.json", lambda r: ""): "empty file (a truncated record?)",
    }
    npz = next(folder.glob("tex_a__*.npz"))
    npz.write_bytes(npz.read_bytes()[:200])  # truncated predictions of a valid record
    return results, npz, cases


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


def _check_warned(stderr: str, cases: dict[str, str]) -> None:
    lines = _warnings(stderr)
    for name, reason in cases.items():
        mine = [line for line in lines if f"{name}:" in line]
        assert len(mine) == 1 and reason in mine[0], (name, reason, lines)


def test_table_shows_every_valid_record_and_warns_once_per_bad_file(store, tmp_path):
    results, _, cases = _damaged(store, tmp_path)
    out = CliRunner().invoke(main, ["table", "--results", str(results), "--metric", "image_auroc"])
    assert out.exit_code == 0, out.output
    _check_warned(out.stderr, cases)
    assert "| obj_b" in out.stdout and "| tex_a" in out.stdout
    assert "7.5" not in out.stdout and "0.99" not in out.stdout and "c_str" not in out.stdout


def test_plot_and_evaluate_survive_bad_records_and_a_truncated_npz(store, tmp_path):
    results, npz, cases = _damaged(store, tmp_path)
    for kind in ("heatmap", "bars", "cost"):
        out = CliRunner().invoke(main, ["plot", kind, "--results", str(results), "--out", str(tmp_path / kind)])
        assert out.exit_code == 0, (kind, out.output)
        _check_warned(out.stderr, cases)
    bars = CliRunner().invoke(main, ["plot", "bars", "--results", str(results), "--out", str(tmp_path / "b2")])
    assert any(str(npz) in line and "saved predictions unreadable" in line for line in _warnings(bars.stderr))
    out = CliRunner().invoke(main, ["evaluate", "--results", str(results)])
    assert out.exit_code == 0, out.output  # obj_b's predictions still reproduce its record
    assert "1 record(s) re-evaluated" in out.stderr
    assert any(str(npz) in line for line in _warnings(out.stderr))


def test_predictions_outside_the_folder_are_never_opened(store, tmp_path, monkeypatch):
    from adbench.results import predictions

    results, _, _ = _damaged(store, tmp_path)
    record = json.loads(next(results.rglob("c_escape__*.json")).read_text())
    record["_path"] = str(next(results.rglob("c_escape__*.json")))
    opened = []
    monkeypatch.setattr(predictions.np, "load", lambda path, **kw: opened.append(path))
    assert predictions.load(record) is None and not predictions.has_predictions(record) and not opened


def test_resume_moves_bad_records_aside_and_reruns_their_jobs(store, tmp_path):
    kit, clean = store
    results = tmp_path / "res"
    shutil.copytree(clean, results)
    victim = next(results.rglob("tex_a__*.json"))
    victim.write_text(victim.read_text()[:100])  # truncated by a crash of another tool
    out = CliRunner().invoke(main, ["run", "--plugin", "adbench_testkit", "--method", "kit_mean", "--dataset", "kitgen",
                                    "--data-root", str(kit), "--results", str(results), "-q"])
    assert out.exit_code == 0, out.output
    moved = victim.with_name(victim.name + ".invalid")
    assert moved.is_file() and moved.read_text().startswith("{")  # kept, never deleted
    assert any(f"{victim}: not valid JSON" in line and "moved aside as" in line for line in _warnings(out.stderr))
    assert "1 job(s) ok, 0 failed, 1 already done" in out.stderr
    assert json.loads(victim.read_text())["status"] == "ok"


def test_records_a_job_returns_pass_the_same_checks(tmp_path):
    """Whatever executor ran a job (local child, Ray worker), a record with an impossible value is
    stored as failed with the reason, never as a result."""
    from adbench.jobs import Job
    from adbench.results.records import base_record
    from adbench.run.result_writer import ResultWriter
    from adbench.results.store import Store

    job = Job(method="kit_mean", dataset="kitgen", data_root=None, categories=["obj_b"], seed=0, protocol="single",
              profile="quick", config={}, config_hash="abc")
    record = base_record(job, "obj_b")
    record.update(status="ok", metrics={**record["metrics"], "image_auroc": 7.5})
    ResultWriter(Store(tmp_path)).accept(job, [record])
    stored = json.loads(next(tmp_path.rglob("*.json")).read_text())
    assert stored["status"] == "failed" and stored["metrics"]["image_auroc"] is None
    assert stored["error"] == "the job returned an unusable record: metric image_auroc = 7.5 is outside [0, 1]"
    assert problem_of(stored) is None


@pytest.mark.parametrize("value, ok", [(0.0, True), (1.0, True), (1 + 1e-12, True), (None, True), (-0.1, False),
                                       (float("nan"), False), (True, False), ("0.5", False)])
def test_metric_range_rule(value, ok):
    from adbench.results.checks import metric_problem

    assert (metric_problem("image_auroc", value) is None) == ok
