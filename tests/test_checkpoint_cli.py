"""Checkpoints end to end (issue 15): a run killed with SIGKILL after its first checkpoint is
run again; the job resumes (``resumed_from`` set, only the remaining steps run) and its metrics
equal an uninterrupted run's; the checkpoint is removed once the record is written, and
``--keep-checkpoints`` keeps the final one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import adbench_testkit

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--set", "image_size=32", "--set", "recon_width=4", "--set", "disc_width=4", "--set", "epochs=40",
            "--set", "batch_size=2", "--set", "max_steps=none", "--set", "score_filter=5"]


def _cmd(data, results, *extra):
    return [sys.executable, str(REPO / "cli.py"), "run", "--plugin", "adbench_testkit", "--method", "draem",
            "--dataset", "kitgen", "--data-root", str(data), "--category", "obj_b", "--profile", "quick",
            "--results", str(results), "-q", *SETTINGS, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}


def _record(results: Path) -> dict:
    (path,) = [p for p in results.rglob("*.json") if ".checkpoints" not in p.parts and ".claims" not in p.parts]
    return json.loads(path.read_text())


def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(tmp_path):
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",), n_train=6)
    whole = subprocess.run(_cmd(data, tmp_path / "whole", "--checkpoint-every", "0"), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    expected = _record(tmp_path / "whole")
    assert expected["resumed_from"] is None and expected["steps_this_attempt"] == 40 * 3

    results = tmp_path / "res"
    # killed and resumed with 2 DataLoader workers drawing the anomalies (issue 16), the whole run
    # with none (the CPU default): the metrics must still be equal
    proc = subprocess.Popen(_cmd(data, results, "--checkpoint-every", "0.5", "--workers", "2"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt_dir = results / ".checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(ckpt_dir.rglob("*.ckpt.json")):
        time.sleep(0.02)
    # kill the whole run the moment its first checkpoint's header exists (the header is written
    # after the checkpoint itself): no sleep whose length a loaded machine could make too long
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    headers = [json.loads(p.read_text()) for p in ckpt_dir.rglob("*.ckpt.json")]
    assert headers and not headers[0]["final"], "the kill came too late: training had ended"
    assert not list((results / "kitgen").rglob("*.json"))  # no record: the job was in flight

    again = subprocess.run(_cmd(data, results, "--checkpoint-every", "0.5", "--workers", "2"), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint" in again.stderr
    record = _record(results)
    resumed = record["resumed_from"]
    assert resumed is not None and resumed["phase"] == "train"
    done_before = resumed["epoch"] * 3 + resumed["step"]
    assert record["steps_this_attempt"] == 40 * 3 - done_before > 0
    for key, value in expected["metrics"].items():
        assert value is None or abs(record["metrics"][key] - value) <= 1e-6, key
    assert record["fit_seconds"] >= resumed["fit_seconds_before"]
    assert not list(ckpt_dir.rglob("*.ckpt")), "the checkpoint outlived its record"


def test_keep_checkpoints_keeps_the_final_one_and_a_rerun_scores_without_training(tmp_path):
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",), n_train=6)
    results = tmp_path / "res"
    first = subprocess.run(_cmd(data, results, "--keep-checkpoints", "--set", "epochs=2"), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    (header,) = [json.loads(p.read_text()) for p in (results / ".checkpoints").rglob("*.ckpt.json")]
    assert header["final"]
    for record in (results / "kitgen").rglob("*.json"):
        record.unlink()  # the record is lost, the trained model is not
    again = subprocess.run(_cmd(data, results, "--keep-checkpoints", "--set", "epochs=2"), env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    record = _record(results)
    assert record["resumed_from"]["final"] and record["steps_this_attempt"] == 0
