"""Fixtures of the reliability tests: run the CLI in-process and check a user error.

A user error is one ``error: ...`` line per problem on stderr, exit code 2, no traceback, and
nothing run: no record under the results folder.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import adbench_testkit
from adbench.cli import main
from reliability_kit import UNDECODABLE, add_hidden_junk


@pytest.fixture()
def kit_data(tmp_path) -> Path:
    """Two tiny MVTec-layout categories (``tex_a``, ``obj_b``) for ``--dataset kitgen``/``folder``."""
    return adbench_testkit.make_kit_data(tmp_path / "data", categories=("tex_a", "obj_b"))


@pytest.fixture()
def run_cli(tmp_path):
    """``run_cli(*args)``: ``adbench run --plugin adbench_testkit --results <tmp>/res -q ARGS``
    in-process -> (click result, results folder)."""

    def run(*args: str):
        results = tmp_path / "res"
        argv = ["run", "--plugin", "adbench_testkit", "--results", str(results), "-q", *args]
        return CliRunner().invoke(main, argv), results

    return run


@pytest.fixture()
def assert_user_error():
    """``assert_user_error(result, results, *lines)``: exit 2, exactly ``lines`` on stderr (each
    ``error: ...``), no traceback, no record written."""

    def check(result, results: Path, *expected_lines: str) -> None:
        assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
        assert "Traceback" not in result.output
        assert result.stderr.strip().splitlines() == list(expected_lines)
        assert not results.exists() or not any(results.rglob("*.json")), "nothing may run on bad input"

    return check




# --------------------------------------------------------------------------------------------
# One real run shared by the hidden-files (item 7) and non-UTF-8 name (item 9) tests
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def junk_dataset_run(tmp_path_factory):
    """``adbench run --dataset folder --save-predictions`` on a flat category (``obj_b``) that
    holds hidden junk (``add_hidden_junk``) and a test image named with byte 0xff.

    Returns (result, data root, results folder). Data: 6 train, 4 good + 4 ``square`` test
    images; one anomaly is made faint so that no metric is trivially 1.
    """
    import os

    import numpy as np
    from PIL import Image

    base = tmp_path_factory.mktemp("junk")
    root = adbench_testkit.make_kit_data(base / "data", categories=("obj_b",), n_good=4, n_bad=4) / "obj_b"
    bad, good = root / "test" / "square", root / "test" / "good"
    faint = (np.asarray(Image.open(bad / "001.png"), float) + 3 * np.asarray(Image.open(good / "000.png"), float)) / 4
    Image.fromarray(faint.astype(np.uint8)).save(bad / "001.png")
    os.rename(os.fsencode(bad / "000.png"), os.fsencode(bad) + b"/" + UNDECODABLE)
    masks = root / "ground_truth" / "square"
    os.rename(os.fsencode(masks / "000_mask.png"), os.fsencode(masks) + b"/" + UNDECODABLE[:-4] + b"_mask.png")
    add_hidden_junk(root)
    results = base / "res"
    argv = ["run", "--plugin", "adbench_testkit", "--method", "kit_mean", "--dataset", "folder",
            "--data-root", str(root), "--results", str(results), "--save-predictions", "-q"]
    return CliRunner().invoke(main, argv), root, results
