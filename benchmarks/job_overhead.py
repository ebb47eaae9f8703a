"""Per-job process overhead of the local executor: forkserver (default) vs spawn.

Runs the same tiny jobs (tests/adbench_testkit.py's kit_mean on 32x32 generated images, fit +
test well under 0.1 s) through ``LocalExecutor`` with each start method and prints, per job,
the wall time the parent waits minus the time the job itself reports (fit + test), i.e. what
isolation costs. The forkserver's one-time start (it imports torch and the built-in methods
once) is reported separately. Run: ``python benchmarks/job_overhead.py [n_jobs]``; note the
machine load printed beside the numbers.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import adbench_testkit  # noqa: E402
from adbench.run.executors import LocalExecutor  # noqa: E402
from adbench.run.runner import RunOptions, plan_run  # noqa: E402


def measure(start_method: str, jobs) -> tuple[float, list[float]]:
    executor = LocalExecutor(start_method=start_method)
    overheads, first = [], None
    for job in jobs:
        t0 = time.perf_counter()
        (record,) = executor.run_one(job)
        wall = time.perf_counter() - t0
        assert record["status"] == "ok", record["error"]
        inside = record["fit_seconds"] + record["test_seconds"]
        if first is None:
            first = wall - inside
        else:
            overheads.append(wall - inside)
    return first, overheads


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    with tempfile.TemporaryDirectory() as tmp:
        cats = tuple(f"obj_{i}" for i in range(n))
        data = adbench_testkit.make_kit_data(Path(tmp) / "data", categories=cats)
        plan = plan_run(RunOptions(method="kit_mean", dataset="kitgen", data_root=str(data),
                                   results=str(Path(tmp) / "res"), plugins=["adbench_testkit"], progress=False))
        print(f"load before: {os.getloadavg()[0]:.1f} (1-min), {os.cpu_count()} CPUs")
        results = {}
        for method in ("forkserver", "spawn"):
            first, rest = measure(method, plan.jobs)
            results[method] = statistics.median(rest)
            print(f"{method:10s} first job {first:6.2f} s (incl. server start)  "
                  f"then per job: median {statistics.median(rest):.2f} s, max {max(rest):.2f} s  (n={len(rest)})")
        print(f"load after: {os.getloadavg()[0]:.1f}")
        print(f"spawn / forkserver per-job overhead: {results['spawn'] / results['forkserver']:.1f}x")


if __name__ == "__main__":
    main()
