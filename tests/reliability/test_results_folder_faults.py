"""Reliability: the results folder (issue 14, cases 1, 3, 6, 10, 11).

Each case asserts what a user sees (one line, an exit code) and that nothing finished is lost.
Runs go through the real CLI in a subprocess where a process-level fault is involved (kills,
signals), and in-process (click's runner) otherwise.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import adbench_testkit
from adbench.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def kit(tmp_path):
    return adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b", "obj_c"))


def _argv(kit, results, *extra):
    return ["run", "--plugin", "adbench_testkit", "--method", "kit_mean", "--dataset", "kitgen",
            "--data-root", str(kit), "--results", str(results), "-q", *extra]


def _cli(kit, results, *extra, env=None, timeout=300):
    cmd = [sys.executable, str(REPO / "cli.py"), *_argv(kit, results, *extra)]
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, start_new_session=True, timeout=timeout)


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("*.json")) if ".claims" not in p.parts]


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


# --- case 1: a results folder that cannot be written -------------------------------------------
def test_results_naming_a_file_is_one_line_before_any_job(kit, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    result = CliRunner().invoke(main, _argv(kit, target))
    assert result.exit_code == 2
    assert _error_lines(result.stderr) == [f"error: --results {target}: is a file, not a folder"]
    assert "Traceback" not in result.output and target.read_text() == "not a folder"


def test_read_only_results_folder_is_one_line_before_any_job(kit, tmp_path, monkeypatch):
    """A read-only folder (as root, permissions do not stop a write, so the file system's
    refusal is simulated at the probe write: the same OSError a read-only mount raises)."""
    import builtins

    results = tmp_path / "ro"
    results.mkdir()
    real_open = builtins.open

    def refusing_open(file, mode="r", *args, **kwargs):
        if "w" in str(mode) and str(file).startswith(str(results)):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    result = CliRunner().invoke(main, _argv(kit, results))
    assert result.exit_code == 2
    assert _error_lines(result.stderr) == [f"error: --results {results}: cannot write there (Read-only file system)"]
    assert not list(results.iterdir())


def test_write_failure_mid_run_stops_cleanly_and_the_rerun_completes(kit, tmp_path, monkeypatch):
    """Disk full while the second job's record is written: one line naming the file and the
    error, exit 2, the first record intact, no temporary file; the rerun finishes the grid."""
    import adbench.results.store as store

    results = tmp_path / "res"
    real = store.write_atomic
    calls = {"n": 0}

    def full_after_first(path, write):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(store, "write_atomic", full_after_first)
    result = CliRunner().invoke(main, _argv(kit, results))
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "obj_c__single" in lines[0]
    assert lines[0].endswith(": No space left on device"), lines
    assert "Traceback" not in result.output
    first = _records(results)
    assert [r["category"] for r in first] == ["obj_b"] and first[0]["status"] == "ok"
    assert not [p for p in results.rglob("*.tmp")] and not list((results / ".claims").rglob("*.claim"))

    monkeypatch.setattr(store, "write_atomic", real)
    again = CliRunner().invoke(main, _argv(kit, results))
    assert again.exit_code == 0, again.output
    assert "1 job(s) ok, 0 failed, 1 already done" in again.stderr
    assert sorted(r["category"] for r in _records(results)) == ["obj_b", "obj_c"]


def _tmpfs(path: Path, size: str, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0


def test_real_read_only_mount(kit, tmp_path):
    disk = tmp_path / "ro"
    if not _tmpfs(disk, "1m", "ro"):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount namespace permission)")
    try:
        out = _cli(kit, disk / "res")
        assert out.returncode == 2
        assert _error_lines(out.stderr) == [f"error: --results {disk / 'res'}: cannot write there (Read-only file system)"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_real_disk_full_mid_run(kit, tmp_path):
    """The same on a real full disk (a small tmpfs filled by another writer while the second job
    trains). Needs permission to mount; the in-process test above covers the logic elsewhere."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "20m"):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount namespace permission)")
    try:
        results = disk / "res"
        filler = disk / "filler.bin"
        out = _cli(kit, results, env={"ADBENCH_KIT_FILL_DISK": f"obj_c:{filler}"})
        assert out.returncode == 2, out.stderr
        lines = _error_lines(out.stderr)
        assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in out.stderr
        assert [r["category"] for r in _records(results)] == ["obj_b"]
        filler.unlink()
        again = _cli(kit, results)
        assert again.returncode == 0, again.stderr
        assert sorted(r["category"] for r in _records(results)) == ["obj_b", "obj_c"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- case 3: --rerun never destroys a good result ----------------------------------------------
def test_failed_rerun_is_written_beside_the_ok_record(kit, tmp_path):
    results = tmp_path / "res"
    assert _cli(kit, results, "--category", "obj_b").returncode == 0
    (ok_path,) = [p for p in results.rglob("*.json") if ".claims" not in p.parts]
    before = ok_path.read_text()
    # the rerun's job is killed (what the OOM killer does): a failed attempt
    out = _cli(kit, results, "--category", "obj_b", "--rerun", env={"ADBENCH_KIT_DIE_ON": "obj_b"})
    assert out.returncode == 1
    assert ok_path.read_text() == before, "the ok record was replaced"
    failed = ok_path.with_name(ok_path.stem + ".failed.json")
    assert json.loads(failed.read_text())["status"] == "failed"
    assert f"kept the earlier ok record; this failed attempt is in {failed.name}" in out.stderr
    # tables ignore the failed attempt while the ok record exists
    table = CliRunner().invoke(main, ["table", "--results", str(results)])
    assert table.exit_code == 0 and "failed" not in table.stdout and "obj_b" in table.stdout


# --- case 6: SIGTERM behaves like Ctrl-C --------------------------------------------------------
def test_sigterm_stops_children_keeps_finished_records(kit, tmp_path):
    results = tmp_path / "res"
    out = _cli(kit, results, env={"ADBENCH_KIT_TERM_ON": "obj_c"})
    assert out.returncode == 143, out.stderr
    assert ("terminated (SIGTERM): jobs in flight were stopped, finished jobs are stored; "
            "rerun the same command to resume") in out.stderr
    assert "Traceback" not in out.stderr
    assert [r["category"] for r in _records(results)] == ["obj_b"]
    assert not list(results.rglob("*.tmp")) and not list((results / ".claims").rglob("*.claim"))


# --- case 10: record_extras that cannot be stored ----------------------------------------------
def test_unstorable_record_extras_fail_the_job_with_the_reason(kit, tmp_path):
    results = tmp_path / "res"
    out = _cli(kit, results, "--category", "obj_b", env={"ADBENCH_KIT_BAD_EXTRAS_ON": "obj_b"})
    assert out.returncode == 1
    (record,) = _records(results)
    assert record["status"] == "failed"
    assert record["error"].startswith("JobError: record_extras()['callback'] cannot be stored in a record"), record["error"]


# --- case 11: work folders of killed jobs --------------------------------------------------------
def test_work_folders_of_dead_processes_are_removed(tmp_path):
    from adbench.run.workdirs import _host_tag, make_workdir, owner_pid, remove_orphaned_workdirs

    mine = Path(make_workdir(str(tmp_path)))
    assert owner_pid(mine) == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"adbench-job-{_host_tag()}-{int(dead.stdout)}-abc123"
    (orphan / "cache").mkdir(parents=True)
    (orphan / "cache" / "spill.bin").write_bytes(b"0" * 1024)
    other_host = tmp_path / "adbench-job-some_other_host-1-abc123"
    other_host.mkdir()
    assert remove_orphaned_workdirs(str(tmp_path)) == 1
    assert not orphan.exists() and mine.is_dir() and other_host.is_dir()


def test_a_killed_job_leaves_a_folder_the_next_run_removes(kit, tmp_path):
    """End to end: a job SIGKILLed mid-fit leaves its work folder; the next run removes it.
    (A private TMPDIR: other adbench runs on this host clean the shared one too.)"""
    from adbench.run.workdirs import PREFIX

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    results = tmp_path / "res"
    out = _cli(kit, results, "--category", "obj_b", env={"ADBENCH_KIT_DIE_ON": "obj_b", "TMPDIR": str(scratch)})
    assert out.returncode == 1
    left = list(scratch.glob(f"{PREFIX}*"))
    assert len(left) == 1, left
    again = _cli(kit, results, "--category", "obj_b", env={"TMPDIR": str(scratch)})
    assert again.returncode == 0 and "note: removed 1 work folder(s) left by killed jobs" in again.stderr
    assert not left[0].exists()


def test_workdir_option_holds_job_folders_and_is_checked_up_front(kit, tmp_path):
    """``--workdir``: jobs' work folders go there (a killed job's is found and removed there by
    the next run), and a --workdir that cannot be written is one exit-2 line before any job."""
    from adbench.run.workdirs import PREFIX

    scratch = tmp_path / "scratch" / "deeper"  # created when missing
    results = tmp_path / "res"
    out = _cli(kit, results, "--category", "obj_b", "--workdir", str(scratch), env={"ADBENCH_KIT_DIE_ON": "obj_b"})
    assert out.returncode == 1
    left = list(scratch.glob(f"{PREFIX}*"))
    assert len(left) == 1, left
    again = _cli(kit, results, "--category", "obj_b", "--workdir", str(scratch))
    assert again.returncode == 0 and "note: removed 1 work folder(s) left by killed jobs" in again.stderr
    assert not left[0].exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    bad = _cli(kit, tmp_path / "res2", "--workdir", str(a_file / "sub"))
    assert bad.returncode == 2 and _error_lines(bad.stderr) == [
        f"error: --workdir {a_file / 'sub'}: {a_file} is a file, not a folder"]  # issue 23: names the file
    assert not (tmp_path / "res2").exists() or not list((tmp_path / "res2").rglob("*.json"))
