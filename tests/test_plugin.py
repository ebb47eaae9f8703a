"""A third-party plugin package (tests/plugin_pkg), pip-installed, shows up and runs.

The package is installed with ``pip install --no-deps --no-build-isolation --target`` into a
scratch folder (never into the shared virtualenv), and that folder is put on PYTHONPATH: its
``.dist-info`` carries the entry points, which is all adbench needs to find the plugin. A copy
of the package is built, so no build files land in the source tree.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import adbench_testkit

REPO = Path(__file__).resolve().parents[1]


def test_pip_installed_plugin_lists_and_runs(tmp_path):
    src = tmp_path / "plugin_src"
    shutil.copytree(REPO / "tests" / "plugin_pkg", src)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    assert list(site.glob("adbench_testplugin-0.1.0.dist-info"))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "tests")])}
    cli = [sys.executable, str(REPO / "cli.py")]
    listed = subprocess.run(cli + ["list"], capture_output=True, text=True, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    line = next(l for l in listed.stdout.splitlines() if l.startswith("plugin_median"))
    assert "entry point plugin_median (adbench-testplugin 0.1.0)" in line and "single" in line
    line = next(l for l in listed.stdout.splitlines() if l.startswith("plugin_flat"))
    assert "entry point plugin_flat (adbench-testplugin 0.1.0)" in line
    assert "method modules that failed to import:" in listed.stdout
    assert "adbench_testplugin.broken:Missing: ImportError: this plugin needs a package" in listed.stdout

    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("flatcat",))
    results = tmp_path / "res"
    ran = subprocess.run(cli + ["run", "--method", "plugin_median", "--dataset", "plugin_flat",
                                "--data-root", str(data / "flatcat"), "--results", str(results), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "| flatcat" in ran.stdout and "plugin_median" in ran.stdout
    (record,) = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert record["status"] == "ok" and record["metrics"]["image_auroc"] > 0.9

    # nothing leaked into the running environment
    from importlib import metadata

    assert "plugin_median" not in {ep.name for ep in metadata.entry_points(group="adbench.methods")}
