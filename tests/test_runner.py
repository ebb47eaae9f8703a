"""Runner: job grid, records, resume, failure isolation, unified protocol, seeds, Ray.

Runs in-process (``adbench.run.runner.run``) with the tiny methods of ``adbench_testkit`` on images
generated into tmp_path; each job still runs in its own child process, as in real runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import adbench_testkit
from adbench.errors import ConfigError
from adbench.run.runner import RunOptions, plan_run, run

TRIGGERS = ("ADBENCH_KIT_KILL_ON", "ADBENCH_KIT_DIE_ON", "ADBENCH_KIT_FAIL_ON", "ADBENCH_KIT_NAN_ON",
            "ADBENCH_KIT_BADSHAPE_ON", "ADBENCH_KIT_INT_ON")


@pytest.fixture()
def kit(tmp_path, monkeypatch):
    for var in TRIGGERS:
        monkeypatch.delenv(var, raising=False)
    root = adbench_testkit.make_kit_data(tmp_path / "data", categories=("tex_a", "obj_b"))
    return root


def _opts(root, results, **kw):
    base = dict(method="kit_mean", dataset="kitgen", data_root=str(root), results=str(results),
                plugins=["adbench_testkit"], progress=False)
    base.update(kw)
    return RunOptions(**base)


def _records(results: Path):
    return sorted((json.loads(p.read_text()) for p in results.rglob("*.json")),
                  key=lambda r: (r["method"], r["category"], r["seed"]))


def test_records_resume_rerun_and_seeds(kit, tmp_path):
    results = tmp_path / "res"
    summary = run(_opts(kit, results, seed="0,1"))
    assert summary.exit_code == 0 and summary.n_ok == 4
    recs = _records(results)
    assert [(r["category"], r["seed"]) for r in recs] == [("obj_b", 0), ("obj_b", 1), ("tex_a", 0), ("tex_a", 1)]
    r = recs[0]
    assert r["status"] == "ok" and r["error"] is None
    assert r["protocol"] == "single" and r["training_categories"] == ["obj_b"]
    assert r["category_kind"] == "object" and recs[2]["category_kind"] == "texture"
    assert r["config"]["image_size"] == 32 and len(r["config_hash"]) == 10
    assert r["geometry"] == "resize32" and r["n_parameters"] == 8 and r["weights_tag"] == "none"
    assert r["device"] == "cpu" and r["peak_cuda_mb"] is None and 0 < r["rss_at_start_mb"] <= r["peak_rss_mb"]
    assert r["metrics"]["image_auroc"] == pytest.approx(1.0)
    assert r["metrics"]["pixel_auroc"] > 0.9
    assert set(r["per_defect"]) == {"square"}
    assert r["counts"]["n_images"] == 6 and r["counts"]["n_anomalous"] == 3
    assert r["fit_seconds"] >= 0 and r["test_seconds"] > 0 and r["test_throughput"] > 0
    assert 50 < r["peak_rss_mb"] < 8000
    assert r["versions"]["torch"] and r["versions"]["python"] and "cpu_count" in r["host"]
    assert isinstance(r["torch_threads"], int) and r["torch_threads"] >= 1
    assert r["record_extras"] == {"trained_on": ["obj_b"]}
    assert r["started"] <= r["finished"]
    # the record file name is the job key
    assert Path(r["record_name"]).name.startswith("obj_b__single__s0__")

    # resume: nothing to do; records untouched
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    again = run(_opts(kit, results, seed="0,1"))
    assert again.n_ok == 0 and len(again.plan.skipped_done) == 4 and len(again.records) == 4
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == before
    # a changed config is a different job, stored beside the old one
    changed = run(_opts(kit, results, seed="0", set_options=["scale=2"]))
    assert changed.n_ok == 2 and len(list(results.rglob("*.json"))) == 6
    # --rerun forces
    forced = run(_opts(kit, results, seed="0", rerun=True, category="obj_b"))
    assert forced.n_ok == 1 and len(forced.plan.skipped_done) == 0


def test_failures_are_isolated_and_retried(kit, tmp_path, monkeypatch):
    """raise / NaN / wrong map shape / a SIGKILLed job process: failed records, run goes on."""
    adbench_testkit.make_kit_data(kit, categories=("obj_c", "obj_d", "obj_e"), seed=1)
    results = tmp_path / "res"
    monkeypatch.setenv("ADBENCH_KIT_FAIL_ON", "obj_b")
    monkeypatch.setenv("ADBENCH_KIT_NAN_ON", "obj_c")
    monkeypatch.setenv("ADBENCH_KIT_BADSHAPE_ON", "obj_d")
    monkeypatch.setenv("ADBENCH_KIT_DIE_ON", "obj_e")
    summary = run(_opts(kit, results))
    assert summary.exit_code == 1 and summary.n_failed == 4 and summary.n_ok == 1
    by_cat = {r["category"]: r for r in _records(results)}
    assert by_cat["tex_a"]["status"] == "ok"
    assert by_cat["obj_b"]["status"] == "failed"
    assert "RuntimeError: deliberate failure in fit" in by_cat["obj_b"]["error"]
    assert "deliberate" in by_cat["obj_b"]["traceback"]
    assert "non-finite" in by_cat["obj_c"]["error"]
    assert "maps of shape (4, 16, 16), expected [4, 32, 32]" in by_cat["obj_d"]["error"]
    assert "SIGKILL" in by_cat["obj_e"]["error"]
    for r in by_cat.values():
        if r["status"] == "failed":
            assert all(v is None for v in r["metrics"].values())
    # failed jobs are retried by the same command; the ok one is skipped
    for var in TRIGGERS:
        monkeypatch.delenv(var, raising=False)
    again = run(_opts(kit, results))
    assert again.exit_code == 0 and again.n_ok == 4 and len(again.plan.skipped_done) == 1
    assert all(r["status"] == "ok" for r in _records(results))
    assert len(list(results.rglob("*.json"))) == 5


def test_seeding_in_the_job_process(kit, tmp_path):
    """A method drawing from Python, NumPy and torch RNGs: same seed -> same numbers."""
    opts = dict(category="obj_b", set_options=["mode=noisy"])
    first = run(_opts(kit, tmp_path / "a", seed="0,1", **opts)).records
    again = run(_opts(kit, tmp_path / "b", seed="0", **opts)).records
    assert first[0]["seed"] == 0 and first[1]["seed"] == 1
    assert again[0]["metrics"] == first[0]["metrics"]
    assert again[0]["metrics"]["pixel_ap"] != first[1]["metrics"]["pixel_ap"]


def test_unified_protocol(kit, tmp_path):
    results = tmp_path / "res"
    summary = run(_opts(kit, results, protocol="unified"))
    assert summary.exit_code == 0 and len(summary.plan.jobs) == 1
    recs = _records(results)
    assert [r["category"] for r in recs] == ["obj_b", "tex_a"]
    for r in recs:
        assert r["protocol"] == "unified"
        assert r["training_categories"] == ["obj_b", "tex_a"]
        assert r["record_extras"] == {"trained_on": ["obj_b", "tex_a"]}
        assert "__unified-2c-" in r["record_name"]
    # single-protocol records of the same method stay apart
    run(_opts(kit, results))
    assert len(list(results.rglob("*.json"))) == 4
    # a single-only method cannot run unified; with a unified-capable one it is skipped
    with pytest.raises(ConfigError, match="kit_scoreonly support only the single protocol"):
        plan_run(_opts(kit, results, method="kit_scoreonly", protocol="unified"))
    plan = plan_run(_opts(kit, results, method="kit_mean,kit_scoreonly", protocol="unified"))
    assert [j.method for j in plan.jobs] == ["kit_mean"] and "skipping kit_scoreonly" in plan.notes[0]


def test_config_resolution_across_methods(kit, tmp_path):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("image_size: 24\nmethods:\n  kit_scoreonly:\n    scale: 3\n")
    plan = plan_run(_opts(kit, tmp_path / "r", method="kit_mean,kit_scoreonly", config_file=str(cfg),
                          set_options=["batch_size=2"], profile="quick"))
    by_method = {j.method: j.config for j in plan.jobs}
    assert by_method["kit_mean"]["image_size"] == 24 and by_method["kit_mean"]["scale"] == 1.0
    assert by_method["kit_scoreonly"]["scale"] == 3.0 and by_method["kit_scoreonly"]["batch_size"] == 2
    notes = plan_run(_opts(kit, tmp_path / "r", method="kit_mean,kit_scoreonly,kit_mean",
                           set_options=["reduce=mean"])).notes
    assert notes == ["--set reduce does not apply to kit_mean (no such field)"]
    plan = plan_run(_opts(kit, tmp_path / "r", method="kit_mean,kit_mean"))
    assert len(plan.jobs) == 2  # duplicates collapse to one job per key
    with pytest.raises(ConfigError, match="expected one of max, mean"):
        plan_run(_opts(kit, tmp_path / "r", method="kit_scoreonly", set_options=["reduce=min"]))
    with pytest.raises(ConfigError, match="did you mean scale"):
        plan_run(_opts(kit, tmp_path / "r", set_options=["scal=2"]))
    with pytest.raises(ConfigError, match="expected a number"):
        plan_run(_opts(kit, tmp_path / "r", set_options=["scale=big"]))
    with pytest.raises(ConfigError, match="--seed"):
        plan_run(_opts(kit, tmp_path / "r", seed="one"))


@pytest.mark.slow
def test_ray_executor(kit, tmp_path, monkeypatch):
    """The same jobs as Ray tasks on a private local cluster: same records as the local
    executor; the job's threads are the CPUs it asked for; a task whose worker dies is retried
    and resumes from the job's checkpoint; the cluster's processes end with the run."""
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    results = tmp_path / "res"
    summary = run(_opts(kit, results, executor="ray", category="obj_b", cpus_per_job=1))
    assert summary.exit_code == 0 and summary.n_ok == 1
    local = tmp_path / "local"
    run(_opts(kit, local, category="obj_b"))
    for a, b in zip(_records(results), _records(local)):
        assert a["metrics"] == pytest.approx(b["metrics"]) and a["record_name"] == b["record_name"]
        assert a["torch_threads"] == 1
    # nothing left to run: Ray is not even started
    import adbench.run.ray_executor

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started with nothing to run")

    with monkeypatch.context() as patched:
        patched.setattr(adbench.run.ray_executor.RayExecutor, "__init__", no_ray)
        again = run(_opts(kit, results, executor="ray", category="obj_b", cpus_per_job=1))
    assert again.exit_code == 0 and len(again.plan.skipped_done) == 1
    # a worker dies after step 4 of 9 (after a checkpoint): Ray retries the task, which resumes
    marker = tmp_path / "died"
    monkeypatch.setenv("ADBENCH_KIT_DIE_AT_STEP", f"4:{marker}")
    retried = tmp_path / "retried"
    summary = run(_opts(kit, retried, executor="ray", category="obj_b", method="kit_trained", cpus_per_job=1,
                        checkpoint_every=1e-6))
    assert summary.exit_code == 0 and marker.exists()
    (record,) = _records(retried)
    assert record["resumed_from"]["step"] == 1 and record["resumed_from"]["epoch"] == 1
    assert record["steps_this_attempt"] == 9 - 4
    import subprocess

    leftovers = subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout.split()
    assert not leftovers, "Ray's processes outlived the run"

def test_two_jobs_at_once_give_the_records_of_one_at_a_time(kit, tmp_path, monkeypatch):
    """``--jobs 2``: two job processes run at the same time (their fits overlap), each with half
    the cores as its threads, and the records equal ``--jobs 1``'s for a deterministic method."""
    import datetime as dt

    monkeypatch.setenv("ADBENCH_KIT_SLEEP_S", "3")
    both = tmp_path / "both"
    summary = run(_opts(kit, both, jobs=2, device="cpu"))
    assert summary.exit_code == 0 and summary.n_ok == 2
    records = _records(both)
    spans = [(dt.datetime.fromisoformat(r["started"]), dt.datetime.fromisoformat(r["finished"])) for r in records]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans  # they overlapped
    cores = len(os.sched_getaffinity(0))
    assert all(r["torch_threads"] == max(1, cores // 2) for r in records)
    monkeypatch.setenv("ADBENCH_KIT_SLEEP_S", "0")
    one = tmp_path / "one"
    run(_opts(kit, one, jobs=1, device="cpu"))
    for a, b in zip(records, _records(one)):
        assert a["metrics"] == b["metrics"] and a["record_name"] == b["record_name"]


def test_job_timeout_fails_the_job_and_keeps_the_others(kit, tmp_path, monkeypatch):
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("ADBENCH_KIT_HANG_ON", "obj_b")
    monkeypatch.setenv("ADBENCH_KIT_PIDFILE", str(pidfile))
    summary = run(_opts(kit, tmp_path / "res", job_timeout=8))
    assert summary.n_failed == 1 and summary.n_ok == 1
    failed = [r for r in _records(tmp_path / "res") if r["status"] == "failed"]
    assert failed[0]["category"] == "obj_b"
    assert failed[0]["error"] == ("job ran longer than --job-timeout 8 s and was stopped; its last checkpoint is "
                                  "kept, a rerun resumes from it")
