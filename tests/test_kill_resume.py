"""kill -9 of a whole run mid-grid, at a deterministic point, then resume.

``kit_mean`` SIGKILLs its own process group from inside ``fit`` on the category named by
``ADBENCH_KIT_KILL_ON``: the CLI, its job server and the job die at once, exactly when the
second job of the grid trains (no timing guess). The rerun of the same command must skip the
finished job, run the rest, and leave exactly one record per job and no temporary file.
"""
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


def _kit_run(data: Path, results: Path, *extra: str) -> list[str]:
    """The CLI command every test here runs: the test kit's ``kit_mean`` over ``data``."""
    return [sys.executable, str(REPO / "cli.py"), "run", "--plugin", "adbench_testkit", "--method", "kit_mean",
            "--dataset", "kitgen", "--data-root", str(data), "--results", str(results), "-q", *extra]


def test_sigkill_mid_grid_then_resume(tmp_path):
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b", "obj_c", "tex_a"))
    results = tmp_path / "res"
    cmd = _kit_run(data, results)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}

    killed = subprocess.run(cmd, env={**env, "ADBENCH_KIT_KILL_ON": "obj_c"}, capture_output=True, text=True,
                            start_new_session=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    files = sorted(p.name for p in results.rglob("*") if p.is_file() and ".claims" not in p.parts)
    assert len(files) == 1 and files[0].startswith("obj_b__single__s0__"), files
    # the killed run's claim on the job it was running stays behind: its process is gone, so
    # the rerun takes it over instead of reporting the job as "running elsewhere"
    claims = [p.name for p in (results / ".claims").rglob("*.claim")]
    assert len(claims) == 1 and claims[0].startswith("obj_c__"), claims
    first = json.loads(next(results.rglob("obj_b__*.json")).read_text())
    assert first["status"] == "ok"

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 of 3 job(s) already done" in resumed.stderr
    assert "2 job(s) ok, 0 failed, 1 already done" in resumed.stderr
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert sorted(r["category"] for r in records) == ["obj_b", "obj_c", "tex_a"]  # exactly one each
    assert all(r["status"] == "ok" for r in records)
    again = json.loads(next(results.rglob("obj_b__*.json")).read_text())
    assert again["finished"] == first["finished"]  # the finished job was not redone
    assert not [p for p in results.rglob("*") if p.is_file() and not p.name.endswith(".json")]  # claims gone
    # the final table lists the whole grid, the job finished before the kill included
    assert "| obj_b" in resumed.stdout and "| tex_a" in resumed.stdout


def as_a_terminal_starts_it() -> None:
    """``preexec_fn`` of a run that models an interactive Ctrl-C: SIGINT at its default action.

    Issue 27: a test suite started in the background of a non-interactive shell (``pytest &``
    in a script, ``nohup``, some CI runners) inherits SIGINT *ignored*, and POSIX passes that on
    through fork and exec. Python then installs no KeyboardInterrupt handler, so the run, its
    job server and its jobs all ignored the test's SIGINT and finished (exit 0). A shell with job
    control starts a foreground command with SIGINT at its default action, which is what a
    user's Ctrl-C meets; a run the user deliberately started ignoring SIGINT keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_finished_jobs(tmp_path):
    """SIGINT to the run's process group (what Ctrl-C does) while the second job trains:
    exit 130, a one-line message, the first job's record kept, no temporary file."""
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b", "obj_c"))
    results = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "ADBENCH_KIT_INT_ON": "obj_c"}
    out = subprocess.run(_kit_run(data, results), env=env, capture_output=True, text=True,
                         start_new_session=True, preexec_fn=as_a_terminal_starts_it, timeout=300)
    assert out.returncode == 130, out.stderr
    assert "interrupted: finished jobs are stored" in out.stderr and "Traceback" not in out.stderr
    files = [p.name for p in results.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].startswith("obj_b__"), files  # no claim left either


def test_job_dies_with_its_run(tmp_path):
    """kill -9 of the CLI process alone (not its group): the job it started must not live on."""
    _kill_cli_while_jobs_hang(tmp_path, ("obj_b",))


def test_two_jobs_at_once_die_with_their_run(tmp_path):
    """``--jobs 2``: kill -9 of the CLI alone while both jobs train leaves neither alive."""
    _kill_cli_while_jobs_hang(tmp_path, ("obj_b", "obj_c"), "--jobs", "2", "--device", "cpu")


def _kill_cli_while_jobs_hang(tmp_path: Path, categories: tuple[str, ...], *extra: str) -> None:
    """Start a run whose job for each of ``categories`` hangs in ``fit`` (after writing its pid),
    wait until all of them hang at once, kill -9 the CLI process alone (not its group) and check
    that every job process is gone within seconds (forkserver exits, PDEATHSIG follows)."""
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=categories)
    pidfile = tmp_path / "jobs.pid"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "ADBENCH_KIT_HANG_ON": ",".join(categories),
           "ADBENCH_KIT_PIDFILE": str(pidfile)}
    proc = subprocess.Popen(_kit_run(data, tmp_path / "res", *extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and (
                not pidfile.exists() or len(pidfile.read_text().split()) < len(categories)):
            time.sleep(0.2)
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        assert len(pids) == len(categories), f"expected {len(categories)} job(s) hanging in fit, saw {pids}"
        proc.kill()
        proc.wait(30)
        deadline = time.time() + 120  # a condition to wait for, bounded generously for a loaded machine
        while time.time() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids), "a job process outlived its run"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
