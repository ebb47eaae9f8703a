"""The ``adbench`` command line: run (real subprocess), table (all formats), list, the cli.py shim."""
from __future__ import annotations

import io
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import adbench_testkit
from adbench.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One real `adbench run`: 2 methods x 3 categories, one category without anomalous test
    images (metrics undefined, not an error), one failing on purpose (exit code 1, the other
    jobs still run and are stored)."""
    tmp = tmp_path_factory.mktemp("cli")
    data = adbench_testkit.make_kit_data(tmp / "data", categories=("obj_b", "obj_fail", "tex_good"),
                                         no_anomalies=("tex_good",))
    results = tmp / "res"
    script = Path(sys.executable).parent / "adbench"
    cmd = [str(script) if script.exists() else sys.executable, *([] if script.exists() else [str(REPO / "cli.py")]),
           "run", "--plugin", "adbench_testkit", "--method", "kit_mean,kit_scoreonly", "--dataset", "kitgen",
           "--data-root", str(data), "--profile", "quick", "--seed", "3", "--results", str(results), "-q",
           "--metric", "image_auroc,pixel_auroc,aupro"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "ADBENCH_KIT_FAIL_ON": "obj_fail"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return out, results


def test_run_prints_table_and_stores_records(ran):
    out, results = ran
    assert out.returncode == 1, out.stderr  # the deliberate failures
    assert "FAILED kit_mean/kitgen/obj_fail/s3: failed: RuntimeError: deliberate failure in fit" in out.stderr
    assert "4 job(s) ok, 2 failed, 0 already done" in out.stderr
    assert "### kitgen: image_auroc" in out.stdout and "### kitgen: aupro" in out.stdout
    image_table = out.stdout.split("### kitgen: pixel_auroc")[0]
    assert re.search(r"\| obj_fail\s+\| failed\s+\| failed", image_table), out.stdout
    assert re.search(r"\| tex_good\s+\| n/a \[1\]\s+\| n/a \[1\]", image_table), out.stdout
    assert "[1] n/a: test set has no anomalous images" in image_table
    assert "profile: quick" in out.stdout
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert len(records) == 6
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["method"] for r in ok} == {"kit_mean", "kit_scoreonly"} and len(ok) == 4
    assert all(r["geometry"] == "resize24" and r["seed"] == 3 and r["profile"] == "quick" for r in ok)
    good = next(r for r in ok if r["category"] == "tex_good" and r["method"] == "kit_mean")
    assert good["metrics"]["image_auroc"] is None and good["metrics"]["pixel_auroc"] is None
    assert good["undefined"]["image_auroc"] == "test set has no anomalous images"
    assert good["counts"]["n_anomalous"] == 0


def test_table_command_formats(ran, tmp_path):
    _, results = ran
    runner = CliRunner()
    md = runner.invoke(main, ["table", "--results", str(results)])
    assert md.exit_code == 0, md.output
    assert "### kitgen: image_auroc" in md.stdout and "| obj_b" in md.stdout
    assert "### kitgen: pixel_auroc" in md.stdout and "method produces no anomaly maps" in md.stdout
    csv = runner.invoke(main, ["table", "--results", str(results), "--format", "csv", "--metric", "image_auroc"])
    frame = pd.read_csv(io.StringIO(csv.stdout), comment="#", index_col=0)
    assert list(frame.columns) == ["kit_mean", "kit_scoreonly"] and float(frame.loc["obj_b", "kit_mean"]) == 1.0
    out = tmp_path / "t.tex"
    latex = runner.invoke(main, ["table", "--results", str(results), "--format", "latex", "--out", str(out)])
    assert latex.exit_code == 0 and "\\toprule" in out.read_text()
    html = runner.invoke(main, ["table", "--results", str(results), "--format", "html", "--dataset", "kitgen"])
    assert "<table" in html.stdout
    long = runner.invoke(main, ["table", "--results", str(results), "--long", "--metric", "image_auroc"])
    rows = pd.read_csv(io.StringIO(long.stdout))
    assert len(rows) == 6 and set(rows["metric"]) == {"image_auroc"}
    bad = runner.invoke(main, ["table", "--results", str(results), "--metric", "image_aroc"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --metric image_aroc: not in the records")
    missing = runner.invoke(main, ["table", "--results", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "folder not found" in missing.stderr
    empty = runner.invoke(main, ["table", "--results", str(results), "--dataset", "mvtec"])
    assert empty.exit_code == 2 and "no records for dataset 'mvtec'" in empty.stderr


def test_list_shows_origin_and_capabilities():
    result = CliRunner().invoke(main, ["list", "methods", "--plugin", "adbench_testkit"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.stdout.splitlines() if l.startswith("kit_scoreonly"))
    assert "adbench_testkit" in line and "single" in line and " no " in line  # module or plugin origin
    line = next(l for l in result.stdout.splitlines() if l.startswith("kit_mean"))
    assert "single,unified" in line and "yes" in line


def test_cli_py_works_from_a_bare_checkout(tmp_path):
    """``python cli.py run`` without the editable install: ``-S`` skips site (so no .pth import
    hook), site-packages is added as a plain path for the dependencies only. Job processes
    inherit ``-S``, so they must get the methods/datasets mapping from cli.py as well."""
    import sysconfig

    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",))
    purelib = sysconfig.get_paths()["purelib"]
    code = (
        "import sys, runpy\n"
        f"sys.path += [{purelib!r}, {str(REPO / 'tests')!r}]\n"
        "sys.argv = ['cli.py', 'run', '--plugin', 'adbench_testkit', '--method', 'kit_mean', '--dataset', 'kitgen',"
        f" '--data-root', {str(data)!r}, '--results', {str(tmp_path / 'res')!r}, '-q']\n"
        f"runpy.run_path({str(REPO / 'cli.py')!r}, run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "res").rglob("*.json")]
    assert record["status"] == "ok", record["error"]
    assert "| obj_b" in out.stdout
