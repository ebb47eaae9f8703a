"""Kill -9 and resume on real data, and what checkpoints cost on a quick run (issue 15).

Runs DRAEM's quick profile on ../shared's MVTec bottle (or ``--data-root``/``--category``):

1. uninterrupted with ``--checkpoint-every 0`` (no checkpoint at all): the reference metrics and
   fit time;
2. uninterrupted with the default ``--checkpoint-every`` (600 s: the final checkpoint only) and
   with ``--checkpoint-every 5``: fit time against (1) is the checkpointing overhead;
3. with ``--checkpoint-every 5``, killed with SIGKILL (the whole run: CLI and job) as soon as the
   first checkpoint's header appears, then the same command again: the rerun must report
   ``resumed_from`` and give metrics equal to (1) within 1e-6.

Every run uses the same seed and thread count. Prints one line per run and exits 1 when the
resumed metrics differ. Run: ``python benchmarks/kill_resume_real.py [--method draem]``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command(args, results: Path, every: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "adbench.cli", "run", "--method", args.method, "--dataset", "mvtec",
           "--data-root", str(args.data_root), "--category", args.category, "--profile", "quick",
           "--device", "cpu", "--results", str(results), "--seed", "0"]
    if every is not None:
        cmd += ["--checkpoint-every", f"{every:g}"]
    return cmd


def record_of(results: Path) -> dict:
    (path,) = [p for p in results.rglob("*.json") if not p.name.endswith(".failed.json")]
    return json.loads(path.read_text())


def run_to_end(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")


def kill_after_first_checkpoint(cmd: list[str], results: Path, timeout: float = 3600) -> float:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if list((results / ".checkpoints").rglob("*.ckpt.json")) if (results / ".checkpoints").exists() else []:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.monotonic() - t0
        if proc.poll() is not None:
            raise SystemExit("the run ended before its first checkpoint")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("no checkpoint appeared")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="draem")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad")
    parser.add_argument("--category", default="bottle")
    args = parser.parse_args()
    print(f"{args.method} quick on {args.data_root.name}/{args.category}, CPU, seed 0, "
          f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="adbench-kill-resume-") as tmp:
        tmp = Path(tmp)
        rows = {}
        for label, every in (("no checkpoints", 0.0), ("default (final only)", None), ("every 5 s", 5.0)):
            results = tmp / label.split()[0]
            run_to_end(command(args, results, every))
            rows[label] = record_of(results)
            r = rows[label]
            ck = r["checkpoints"] or {}
            print(f"  {label:22s} fit {r['fit_seconds']:8.1f} s  checkpoints {ck.get('written', 0):3d} "
                  f"({ck.get('seconds', 0.0):.2f} s, {ck.get('bytes', 0) / 2**20:.1f} MiB)  "
                  f"image AUROC {r['metrics']['image_auroc']:.6f}", flush=True)
        killed = tmp / "killed"
        cmd = command(args, killed, 5.0)
        after = kill_after_first_checkpoint(cmd, killed)
        run_to_end(cmd)
        resumed = record_of(killed)
        reference = rows["no checkpoints"]["metrics"]
        diffs = {k: abs(resumed["metrics"][k] - v) for k, v in reference.items()
                 if isinstance(v, float) and isinstance(resumed["metrics"].get(k), float)}
        print(f"  killed after {after:.1f} s, rerun resumed_from {resumed['resumed_from']}, "
              f"steps_this_attempt {resumed['steps_this_attempt']}", flush=True)
        print(f"  largest metric difference to the uninterrupted run: {max(diffs.values()):.2e} "
              f"({', '.join(f'{k} {v:.1e}' for k, v in diffs.items())})")
        if resumed["resumed_from"] is None or max(diffs.values()) > 1e-6:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
