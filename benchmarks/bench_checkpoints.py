"""What a checkpoint costs, per trained method at its paper profile (issue 15's closing table).

Each method runs one short job at its ``paper`` profile on the built-in synthetic set with
random weights (the paper weights are not needed to measure sizes: the networks are the same),
a budget of a few steps, and ``--checkpoint-every 1e-6`` so that a checkpoint is written after
every step. The record's ``checkpoints`` field (written by ``adbench.training``) gives the
number written, their total time and the size of the last (final) one on disk; this script
prints size and seconds per checkpoint. Mid-training checkpoints hold the optimiser's state too;
the final one holds what the method keeps for scoring (PatchCore-family: the memory bank).

Run: ``python benchmarks/bench_checkpoints.py [method ...] [--results DIR]``. The time per
checkpoint depends on the disk; note it with the numbers.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: a few steps of each method's paper recipe (the budget options are the method's own names);
#: DRAEM and ToCoAD draw procedural textures here (the paper's DTD images are not needed to
#: measure what a checkpoint costs)
SHORT_BUDGET = {
    "draem": ["max_steps=3", "anomaly_source=procedural"],
    "autoencoder": ["max_steps=3"],
    "reverse_distillation": ["epochs=1"],
    "fastflow": ["epochs=1"],
    "uniad": ["epochs=1"],
    "cutpaste": ["epochs=1", "steps_per_epoch=2"],
    "cutpaste_patch": ["epochs=1", "steps_per_epoch=2"],
    "tocoad": ["dnp_epochs=1", "ncl_epochs=1", "steps_per_epoch=2", "anomaly_source=procedural"],
    "patchcore": [],
}


def run_one(method: str, results: Path) -> dict:
    cmd = [sys.executable, "-m", "adbench.cli", "run", "--method", method, "--profile", "paper",
           "--dataset", "synthetic", "--category", "chip", "--weights", "random", "--results", str(results),
           "--checkpoint-every", "0.000001", "--keep-checkpoints", "--device", "cpu"]
    for option in SHORT_BUDGET[method]:
        cmd += ["--set", option]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    records = [json.loads(p.read_text()) for p in results.rglob("*.json")
               if p.parent.name == method and not p.name.endswith(".failed.json")]
    if done.returncode != 0 or not records or records[0]["status"] != "ok":
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{method}: run failed ({done.returncode}): {' | '.join(tail)}")
    record = records[0]
    return {"method": method, "wall": wall, **record["checkpoints"], "steps": record["steps_this_attempt"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", default=list(SHORT_BUDGET))
    parser.add_argument("--results", type=Path, default=None, help="where the short runs write (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adbench-bench-ckpt-") as tmp:
        results = args.results or Path(tmp) / "results"
        print(f"{'method':22s} {'written':>7s} {'s/ckpt':>7s} {'largest':>11s} {'final':>11s}  "
              f"(paper profile, random weights)")
        for method in args.methods:
            row = run_one(method, results)
            per = row["seconds"] / row["written"] if row["written"] else float("nan")
            largest = row.get("largest_bytes", row["bytes"])
            print(f"{method:22s} {row['written']:7d} {per:7.2f} {largest / 2**20:7.1f} MiB {row['bytes'] / 2**20:7.1f} MiB"
                  + (f"  disabled: {row['disabled']}" if row["disabled"] else ""), flush=True)


if __name__ == "__main__":
    main()
