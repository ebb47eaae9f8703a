"""Reliability (issue 23): run options and folders that used to stop or mislead a run.

Each test reproduces one case of the audit and asserts the new behaviour: one ``error:`` line
and exit 2 before any job for what the user can fix up front; a note where a value is adjusted;
one "disk full" line instead of a SIGBUS; ``--rerun`` computing each job once.

Cases here: 3 (``--checkpoint-dir`` below a file), 7 (negative Ray request), 8 (a corrupt file
in ``$ADBENCH_WEIGHTS_DIR``), 10 (``--keep-checkpoints`` then ``--rerun``), 12 (``nan`` and
``inf`` options), 14 (concurrent ``--rerun`` runs), 15 (spilling the image cache on a full
disk), 16 (``--set image_size=100000``), 17 (``--workers 200``), 18 (Ray-only options without
``--executor ray``). Cases 1, 2, 4, 9, 11 are in ``test_checkpoint_faults.py``, 5 and 13 in
``test_claims_untrusted.py``, 6 in ``test_ray_resources.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adbench_testkit

REPO = Path(__file__).resolve().parents[2]


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("*.json"))
            if ".claims" not in p.parts and ".checkpoints" not in p.parts]


# --- case 3: --checkpoint-dir below a regular file ---------------------------------------------
def test_checkpoint_dir_below_a_file_is_one_line_before_any_job(tmp_path, kit_data, run_cli, assert_user_error):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    result, results = run_cli("--method", "kit_trained", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--checkpoint-dir", str(afile / "sub"))
    assert_user_error(result, results, f"error: --checkpoint-dir {afile / 'sub'}: {afile} is a file, not a folder")


def test_workdir_below_a_file_is_one_line_before_any_job(tmp_path, kit_data, run_cli, assert_user_error):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    result, results = run_cli("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--workdir", str(afile / "w"))
    assert_user_error(result, results, f"error: --workdir {afile / 'w'}: {afile} is a file, not a folder")


# --- case 7 and 12: values that make no sense ---------------------------------------------------
@pytest.mark.parametrize("args, line", [
    (("--executor", "ray", "--cpus-per-job", "-1"), "error: --cpus-per-job -1.0: must be > 0"),
    (("--executor", "ray", "--memory-per-job", "nan"), "error: --memory-per-job nan: must be a finite number"),
    (("--executor", "ray", "--gpus-per-job", "-0.5"), "error: --gpus-per-job -0.5: must be >= 0"),
    (("--checkpoint-every", "nan"),
     "error: --checkpoint-every nan: must be >= 0 seconds (0 turns checkpoints off, inf keeps only the final one)"),
    (("--job-timeout", "nan"), "error: --job-timeout nan: must be a finite number seconds"),
    (("--job-timeout", "inf"), "error: --job-timeout inf: must be a finite number seconds"),
    (("--cache-gb", "inf"), "error: --cache-gb inf: must be 0 (always spill to --workdir) or more, and finite"),
    (("--cache-gb", "nan"), "error: --cache-gb nan: must be 0 (always spill to --workdir) or more, and finite"),
])
def test_nonsense_numbers_are_one_line(kit_data, run_cli, assert_user_error, args, line):
    result, results = run_cli("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data), *args)
    assert_user_error(result, results, line)


# --- case 18: Ray-only options without Ray ----------------------------------------------------------
def test_ray_options_without_ray_are_an_error(kit_data, run_cli, assert_user_error):
    result, results = run_cli("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--cpus-per-job", "2", "--memory-per-job", "4")
    assert_user_error(result, results, "error: --cpus-per-job, --memory-per-job: only --executor ray reads them "
                                       "(the local executor divides this machine's cores with --jobs)")


# --- case 16: an image size no machine has memory for -------------------------------------------------
def test_an_image_size_that_cannot_fit_is_one_line(kit_data, run_cli, assert_user_error):
    result, results = run_cli("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--set", "image_size=100000")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --set image_size=100000, batch_size=4: kit_mean's input batch alone (4 images "
                           "of 3 x 100000 x 100000, float32) needs ") and "available" in line
    assert_user_error(result, results, line)


# --- case 17: more workers than CPUs --------------------------------------------------------------
def test_workers_above_the_jobs_cpus_are_capped_with_a_note(kit_data, run_cli):
    cores = len(os.sched_getaffinity(0))
    result, results = run_cli("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--category", "obj_b", "--workers", "200", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"note: --workers 200: capped at {cores}, the CPUs each job has" in result.stderr
    (record,) = _records(results)
    assert record["input_pipeline"]["workers"] == cores


# --- case 8: a corrupt file in the weights folder ------------------------------------------------
def test_a_corrupt_weights_folder_file_is_found_before_any_job(tmp_path, kit_data, run_cli, assert_user_error,
                                                                monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "resnet18.tv_in1k.pth").write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(folder))
    result, results = run_cli("--method", "patchcore", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--profile", "quick", "--set", "backbone=resnet18.tv_in1k", "--set", "image_size=32",
                              "--set", "crop_size=none")
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {folder / 'resnet18.tv_in1k.pth'}: cannot read weights file (")
    assert line.endswith("[needed by patchcore]")
    assert_user_error(result, results, line)


# --- case 10: --keep-checkpoints, then --rerun --------------------------------------------------------
def test_rerun_retrains_instead_of_scoring_the_kept_model(kit_data, run_cli):
    args = ("--method", "kit_trained", "--dataset", "kitgen", "--data-root", str(kit_data), "--category", "obj_b",
            "--keep-checkpoints")
    first, results = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert list((results / ".checkpoints").rglob("*.ckpt")), "the final checkpoint is kept"
    again, _ = run_cli(*args, "--rerun")
    assert again.exit_code == 0, again.output
    (record,) = _records(results)
    assert record["resumed_from"] is None
    assert record["steps_this_attempt"] == (len(list((kit_data / "obj_b" / "train" / "good").iterdir())) + 1) // 2 * 3
    assert list((results / ".checkpoints").rglob("*.ckpt")), "the new final checkpoint is kept"


# --- case 14: two concurrent --rerun runs compute each job once ----------------------------------------
def test_concurrent_reruns_compute_each_job_once(tmp_path):
    categories = ("obj_a", "obj_b", "obj_c", "tex_a", "tex_b", "tex_c")
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=categories)
    results = tmp_path / "res"
    cmd = [sys.executable, str(REPO / "cli.py"), "run", "--plugin", "adbench_testkit", "--method", "kit_mean",
           "--dataset", "kitgen", "--data-root", str(data), "--results", str(results), "-q", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    before = {r["record_name"]: r["finished"] for r in _records(results)}
    env["ADBENCH_KIT_SLEEP_S"] = "1.5"
    runs = [subprocess.Popen(cmd + ["--rerun"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    ran = sum(int(err.strip().splitlines()[-1].split(" job(s) ok")[0].split()[-1]) for _, err in outs)
    assert ran == len(categories), [err.strip().splitlines()[-1] for _, err in outs]
    after = {r["record_name"]: r["finished"] for r in _records(results)}
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)  # each recomputed


# --- case 15: spilling the image cache to a full disk ----------------------------------------------------
def test_a_full_workdir_is_one_disk_full_line(tmp_path, kit_data, monkeypatch):
    """``--cache-gb 0`` spills the decoded images to ``--workdir``; with too little free space
    there the job fails with one "disk full" line (before, a memory map died of SIGBUS). Run
    in-process (``run_job_catching``) so the disk can be made "full" with a monkeypatch."""
    import shutil

    from adbench.run.runner import RunOptions, plan_run
    from adbench.run.worker import run_job_catching

    plan = plan_run(RunOptions(method="autoencoder", dataset="kitgen", data_root=str(kit_data), category="obj_b",
                               profile="quick", weights="random", results=str(tmp_path / "res"), cache_gb=0.0,
                               workdir=str(tmp_path / "work"), plugins=["adbench_testkit"], progress=False,
                               set_options=["image_size=32", "epochs=1"]))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    (record,) = run_job_catching(plan.jobs[0].to_dict())
    assert record["status"] == "failed"
    assert record["error"].startswith("DiskFull: disk full: the decoded-images cache needs ")
    assert "(--workdir), only 0.0 MiB free; give --workdir a larger disk, or --cache-gb more memory" in record["error"]
    assert "\n" not in record["error"]
    assert not list((tmp_path / "work").rglob("*.bin")), "the spill file is not left behind"


def test_stale_time_check_of_concurrent_reruns_uses_this_runs_start(tmp_path):
    """The rule behind case 14: a record written after this run started counts as done by a
    concurrent ``--rerun``; an older one is recomputed."""
    from adbench.run.runner import Dispatch

    dispatch = Dispatch.__new__(Dispatch)
    dispatch.started = time.time()

    class FakeStore:
        def __init__(self, paths):
            self.paths = paths

        def record_paths(self, job):
            return self.paths

    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text("{}")
    os.utime(old, (dispatch.started - 60, dispatch.started - 60))
    new.write_text("{}")
    os.utime(new, (dispatch.started + 1, dispatch.started + 1))

    class FakePlan:
        store = None

    dispatch.plan = FakePlan()
    dispatch.plan.store = FakeStore([old])
    assert not dispatch._written_since_start(None)
    dispatch.plan.store = FakeStore([new])
    assert dispatch._written_since_start(None)
    dispatch.plan.store = FakeStore([old, new])
    assert not dispatch._written_since_start(None)
