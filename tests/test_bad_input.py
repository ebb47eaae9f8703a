"""Bad input: one clear ``error:`` line per problem, exit code 2, no traceback, nothing run.

Every check happens before any training (the whole index of every selected category is
validated up front), so a test asserts that no record was written. Most cases go through
click's in-process runner (fast); one goes through ``python cli.py`` in a real subprocess to
show the user sees no traceback (and sees one with ``--debug``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import adbench_testkit
from adbench.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def data(tmp_path):
    return adbench_testkit.make_kit_data(tmp_path / "data", categories=("tex_a", "obj_b"))


def _run(tmp_path, *args):
    results = tmp_path / "res"
    argv = ["run", "--plugin", "adbench_testkit", "--results", str(results), "-q", *args]
    result = CliRunner().invoke(main, argv)
    return result, results


def _assert_user_error(result, results: Path, *needles: str, lines: int | None = None):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip().splitlines()
    assert err and all(line.startswith("error: ") for line in err), err
    assert "Traceback" not in result.output
    for needle in needles:
        assert any(needle in line for line in err), (needle, err)
    if lines is not None:
        assert len(err) == lines, err
    assert not results.exists() or not any(results.rglob("*.json")), "nothing may run on bad input"


def test_names_options_and_roots(tmp_path, data):
    base = ["--dataset", "kitgen", "--data-root", str(data)]
    r, res = _run(tmp_path, "--method", "kit_maen", *base)
    _assert_user_error(r, res, "--method 'kit_maen': unknown method (did you mean 'kit_mean'?)", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", "--dataset", "kitgne", "--data-root", str(data))
    _assert_user_error(r, res, "unknown dataset (did you mean 'kitgen'?)", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(tmp_path / "nope"))
    _assert_user_error(r, res, "nope: folder not found", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", "--dataset", "kitgen")
    _assert_user_error(r, res, "--data-root is required", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--category", "obj_bb,tex_a")
    _assert_user_error(r, res, "--category 'obj_bb' (did you mean 'obj_b'?) not found", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--set", "scael=2")
    _assert_user_error(r, res, "--set scael: unknown key for kit_mean (did you mean scale?)", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--set", "image_size=big")
    _assert_user_error(r, res, "--set image_size='big': expected an integer", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--set", "image_size")
    _assert_user_error(r, res, "expected key=value", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--config", str(tmp_path / "missing.yaml"))
    _assert_user_error(r, res, "missing.yaml: file not found", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--profile", "fast")
    _assert_user_error(r, res, "--profile 'fast' is not defined", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--weights", str(tmp_path / "w.pth"))
    _assert_user_error(r, res, "w.pth: file not found", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--seed", "1,x")
    _assert_user_error(r, res, "--seed '1,x': expected an integer", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--device", "tpu")
    _assert_user_error(r, res, "--device 'tpu'", lines=1)
    r, res = _run(tmp_path, "--method", "kit_mean", *base, "--plugin", "no_such_plugin_mod")
    _assert_user_error(r, res, "--plugin no_such_plugin_mod: cannot import", lines=1)


def test_data_problems_all_reported_before_training(tmp_path, data):
    base = ["--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(data)]
    # corrupt image in tex_a (the *last* category in order: still caught before obj_b trains)
    (data / "tex_a" / "test" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # mask of the wrong size and a missing mask in obj_b
    Image.new("L", (16, 16)).save(data / "obj_b" / "ground_truth" / "square" / "000_mask.png")
    (data / "obj_b" / "ground_truth" / "square" / "001_mask.png").unlink()
    r, res = _run(tmp_path, *base)
    _assert_user_error(
        r, res,
        "tex_a/test/good/001.png: cannot decode image",
        "000_mask.png: mask is 16x16 but its image 000.png is 32x32",
        "square/001_mask.png: mask file not found",
        lines=3,
    )


def test_empty_train_folder(tmp_path, data):
    for p in (data / "obj_b" / "train" / "good").iterdir():
        p.unlink()
    r, res = _run(tmp_path, "--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(data))
    _assert_user_error(r, res, "obj_b: empty train split", lines=1)


def test_subprocess_no_traceback_unless_debug(tmp_path, data):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    cmd = [sys.executable, str(REPO / "cli.py"), "run", "--plugin", "adbench_testkit", "--method", "kit_mean",
           "--dataset", "kitgen", "--data-root", str(data), "--category", "nope", "--results", str(tmp_path / "r")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: --category 'nope' not found in {data}; available: obj_b, tex_a"
    ]
    assert out.stdout == ""
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_missing_paper_weights_stop_the_run_before_any_job(tmp_path, data, monkeypatch):
    """Offline, a paper profile's exact tag is missing: one exit-2 line per missing tag, naming
    it, before any job (no record), not a failed record per job. Quick profiles warn instead."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(tmp_path / "no_weights_here"))
    base = ["--dataset", "kitgen", "--data-root", str(data)]
    r, res = _run(tmp_path, "--method", "patchcore,reverse_distillation", *base)
    _assert_user_error(r, res, "no pretrained weights for wide_resnet50_2.tv_in1k (offline)", lines=1)
    assert "[needed by patchcore, reverse_distillation]" in r.stderr
    r, res = _run(tmp_path, "--method", "uniad,patchcore", *base)
    _assert_user_error(r, res, "no pretrained weights for tf_efficientnet_b4.aa_in1k (offline)",
                       "no pretrained weights for wide_resnet50_2.tv_in1k (offline)", lines=2)
    # a miad profile may not quietly train on a random backbone either
    r, res = _run(tmp_path, "--method", "tocoad", "--profile", "convnext", *base)
    _assert_user_error(r, res, "no pretrained weights for convnext_tiny.fb_in1k", lines=1)


def test_quick_profile_without_weights_warns_once_up_front_and_runs(tmp_path, data, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(tmp_path / "no_weights_here"))
    r, res = _run(tmp_path, "--method", "patchcore", "--profile", "quick", "--dataset", "kitgen",
                  "--data-root", str(data), "--category", "obj_b", "--set", "image_size=64", "--set", "crop_size=none")
    assert r.exit_code == 0, r.output
    assert r.stderr.count("note: no weights for tf_efficientnet_lite0.in1k (offline") == 1
    record = json.loads(next(res.rglob("*.json")).read_text())
    assert record["weights_tag"] == "random" and record["weights_source"].startswith("random (fallback")


def test_bad_weights_files_are_one_line_before_any_job(tmp_path, data):
    """--weights FILE is read and fitted to every backbone of the run once, up front: corrupt,
    empty, truncated, unsafe or for another architecture, it is one exit-2 line, no record."""
    import pickle
    import warnings as _warnings

    import timm
    import torch

    good = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), good)
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all" * 10)
    unsafe = tmp_path / "unsafe.pth"
    unsafe.write_bytes(pickle.dumps({"fn": _warnings.WarningMessage}))
    base = ["--method", "patchcore", "--profile", "quick", "--dataset", "kitgen", "--data-root", str(data)]
    for path, needle in ((truncated, "cannot read weights file"), (empty, "cannot read weights file"),
                         (corrupt, "cannot read weights file"), (unsafe, "cannot read weights file"),
                         (other, "weights are for another architecture than tf_efficientnet_lite0.in1k")):
        r, res = _run(tmp_path, *base, "--weights", str(path))
        _assert_user_error(r, res, needle, str(path), lines=1)


def test_input_pipeline_options_are_checked_up_front(tmp_path, data):
    """``--workers`` and ``--cache-gb`` (issue 16): one line each, nothing run."""
    base = ["--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(data)]
    r, res = _run(tmp_path, *base, "--workers", "-1")
    _assert_user_error(r, res, "--workers -1: must be 0", lines=1)
    r, res = _run(tmp_path, *base, "--cache-gb", "-0.5")
    _assert_user_error(r, res, "--cache-gb -0.5: must be 0", lines=1)
