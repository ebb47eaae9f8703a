"""Reliability: two runs on one results folder share the work through per-job claims (issue 14,
case 4). Unit cases on ``ClaimBook`` (live holders, dead processes, expired leases of other
hosts, renewal), then two real runs over one grid at the same time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import adbench_testkit
from adbench.results.claims import ClaimBook, Holder

REPO = Path(__file__).resolve().parents[2]


def _fake_claim(path: Path, *, pid: int, host: str, renewed_ago: float, lease: float = 600.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path.write_text(json.dumps({"pid": pid, "host": host, "token": "theirs", "claimed_at": now - renewed_ago,
                                "renewed_at": now - renewed_ago, "lease_seconds": lease, "job": "x"}))


def test_a_live_claim_is_respected_and_released(tmp_path):
    a, b = ClaimBook(tmp_path), ClaimBook(tmp_path)
    path = a.path_for("kitgen", "kit_mean", "obj_b__single__s0__abc")
    assert a.acquire(path, "job") is None and path.is_file() and path.suffix == ".claim"
    holder = b.acquire(path, "job")
    assert isinstance(holder, Holder) and holder.pid == os.getpid() and holder.token == a.token
    a.release(path)
    assert not path.exists()
    assert b.acquire(path, "job") is None
    b.release_all()


def test_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    import socket

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    book = ClaimBook(tmp_path)
    path = book.path_for("d", "m", "job")
    _fake_claim(path, pid=dead, host=socket.gethostname(), renewed_ago=1.0)
    assert book.acquire(path) is None
    assert json.loads(path.read_text())["token"] == book.token
    book.release_all()


def test_claim_of_another_host_counts_until_its_lease_expires(tmp_path):
    book = ClaimBook(tmp_path)
    path = book.path_for("d", "m", "job")
    _fake_claim(path, pid=1, host="another-host", renewed_ago=10.0, lease=600.0)
    holder = book.acquire(path)
    assert holder is not None and holder.host == "another-host"  # live lease: skipped
    _fake_claim(path, pid=1, host="another-host", renewed_ago=700.0, lease=600.0)
    assert book.acquire(path) is None  # expired lease: taken over
    book.release_all()


def test_a_held_claim_is_renewed_while_the_run_lives(tmp_path):
    book = ClaimBook(tmp_path, lease_seconds=0.5, renew_seconds=0.05)
    path = book.path_for("d", "m", "job")
    assert book.acquire(path) is None
    first = Holder.from_file(path).renewed_at
    time.sleep(1.0)  # twice the lease: without renewal another run would take it over
    holder = Holder.from_file(path)
    assert holder.renewed_at > first and not holder.is_stale()
    assert ClaimBook(tmp_path).acquire(path) is not None
    book.release_all()
    assert not path.exists()


def test_two_runs_over_one_grid_share_the_work(tmp_path):
    """Run B starts while run A works through 4 slow jobs: every job is computed exactly once,
    and each run's summary counts the jobs the other holds or finished apart from its own."""
    kit = adbench_testkit.make_kit_data(tmp_path / "data", categories=("c1", "c2", "c3", "c4"))
    results = tmp_path / "res"
    cmd = [sys.executable, str(REPO / "cli.py"), "run", "--plugin", "adbench_testkit", "--method", "kit_mean",
           "--dataset", "kitgen", "--data-root", str(kit), "--results", str(results), "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "ADBENCH_KIT_SLEEP_S": "4"}
    a = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((results / ".claims").rglob("*.claim")):
        time.sleep(0.1)
    b = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_a, out_b = a.communicate(timeout=600), b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, (out_a[1], out_b[1])
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert sorted(r["category"] for r in records) == ["c1", "c2", "c3", "c4"]
    starts = {r["category"]: r["started"] for r in records}
    assert len(starts) == 4
    summaries = [next(line for line in err.splitlines() if "job(s) ok" in line) for _, err in (out_a, out_b)]
    oks = [int(s.split(" job(s) ok")[0]) for s in summaries]
    assert sum(oks) == 4 and min(oks) >= 1, summaries  # both runs did part of the grid
    assert any("running elsewhere" in s for s in summaries), summaries
    assert not list((results / ".claims").rglob("*.claim"))
