"""``adbench report`` at scale: wall time and site size on a 2,000-record store, next to ``adbench table``.

Why this exists: issue 25 ("Done when 3") asks that the report of a lab-sized store (3 datasets of
19 categories, 12 method settings, 3 seeds, saved predictions for one dataset: 2,052 records) be
written in at most 30 s on 2 cores and weigh at most 30 MB on disk, gallery thumbnails included.
``adbench table`` reads the same records and prints Markdown; its time on the same store, measured
in the same run, is the baseline that says how much of the report's time is reading records
(which both do) and how much is the report's own work (intervals, ranks, charts, galleries).

What it does:

1. Generates the store into ``--store DIR`` with ``adbench.results.generated`` (fake but internally
   consistent records; see that module). A marker file ``.bench_report_store.json`` is written last,
   so a DIR that holds it is a complete store and is reused, not regenerated (said in the output).
   Generation time is printed but is not part of the comparison.
2. Runs the real CLI as a user does, as subprocesses: ``adbench report --results DIR --out <tmp>``
   and ``adbench table --results DIR`` (all datasets, default metrics; its stdout discarded).
   ``--repeat N`` runs each N times, alternating, and reports the medians.
3. Measures the site: every file under the out folder (gallery thumbnails included), in MB
   (2**20 bytes) as the sum of file sizes; the space allocated on disk (``du``) is printed beside it.

How to read the output: readable lines first (generation, each time, the ratio report/table, the
size), then as the LAST line one JSON object with ``records``, ``seconds`` (report), ``table_seconds``,
``megabytes``, ``ratio``, the targets ``target_seconds``/``target_megabytes`` and ``within_seconds``/
``within_megabytes``. A missed target still exits 0 (the JSON says so); only errors exit nonzero.
Timings on a shared machine are inflated by other load: the load average and CPU count are printed.

Usage: python benchmarks/bench_report.py --store DIR [--repeat N] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adbench.results.generated import default_plan, generate
from adbench.results.store import Store

MARKER = ".bench_report_store.json"
TARGET_SECONDS = 30.0
TARGET_MEGABYTES = 30.0
MB = 2.0 ** 20


def plan_description(plan) -> dict:
    """What the marker records about the plan, so that a store of another plan is not reused."""
    return {"datasets": {k: list(v) for k, v in plan.datasets.items()},
            "settings": [s.method for s in plan.settings], "seeds": list(plan.seeds),
            "with_predictions": list(plan.with_predictions)}


def reusable(store: Path, wanted: dict) -> bool:
    """True when ``store`` holds a complete generated store of the same plan (its marker says so)."""
    marker = store / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("plan") == wanted
    except ValueError:
        return False


def check_store_folder(store: Path) -> None:
    """Refuse to generate over records that are not generated ones (someone's real results)."""
    if not store.is_dir():
        return
    for record in Store(store).records():
        if record.get("generated") is not True:
            raise SystemExit(f"--store {store}: holds records that are not generated ones "
                             f"(e.g. {record['_path']}); give an empty or new folder")


def prepare_store(store: Path) -> tuple[int, float, bool]:
    """(records, generation seconds, reused?): generate the store unless a complete one is there."""
    plan = default_plan()
    wanted = plan_description(plan)
    if reusable(store, wanted):
        return json.loads((store / MARKER).read_text())["records"], 0.0, True
    check_store_folder(store)
    (store / MARKER).unlink(missing_ok=True)
    t0 = time.perf_counter()
    n = generate(store, plan)
    seconds = time.perf_counter() - t0
    (store / MARKER).write_text(json.dumps({"records": n, "generation_seconds": round(seconds, 2),
                                            "plan": wanted}, indent=1))
    return n, seconds, False


def adbench_command() -> list[str]:
    """The ``adbench`` console script beside this interpreter (as a user runs it); failing that,
    the click group run through ``python -c`` (there is no ``adbench.__main__``)."""
    script = Path(sys.executable).with_name("adbench")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from adbench.cli import main; main()"]


def timed(args: list[str], what: str) -> float:
    """Wall seconds of one subprocess run; its stdout is discarded, a failure is an error."""
    t0 = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return seconds


def folder_megabytes(folder: Path) -> tuple[float, float, int]:
    """(MB as the sum of file sizes, MB allocated on disk as ``du`` counts it, number of files) of
    everything under ``folder``. The first is what the target and the JSON use (what a copy, a
    commit or a zip carries); the second adds the file system's block rounding of small files."""
    files = [folder] if folder.is_file() else [p for p in folder.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return sum(s.st_size for s in stats) / MB, sum(s.st_blocks * 512 for s in stats) / MB, len(stats)


def measure(store: Path, site: Path, repeat: int) -> tuple[list[float], list[float]]:
    """Report and table times, ``repeat`` of each, alternating so that load drifts hit both."""
    cli = adbench_command()
    report_args = cli + ["report", "--results", str(store), "--out", str(site)]
    table_args = cli + ["table", "--results", str(store)]
    reports, tables = [], []
    for i in range(repeat):
        reports.append(timed(report_args, "adbench report"))
        tables.append(timed(table_args, "adbench table"))
        print(f"  run {i + 1}/{repeat}: report {reports[-1]:.2f} s, table {tables[-1]:.2f} s", flush=True)
    return reports, tables


def summary(records: int, report_s: float, table_s: float, megabytes: float) -> dict:
    return {"records": records, "seconds": round(report_s, 3), "table_seconds": round(table_s, 3),
            "megabytes": round(megabytes, 3), "ratio": round(report_s / table_s, 3) if table_s > 0 else None,
            "target_seconds": int(TARGET_SECONDS), "target_megabytes": int(TARGET_MEGABYTES),
            "within_seconds": report_s <= TARGET_SECONDS, "within_megabytes": megabytes <= TARGET_MEGABYTES}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, type=Path, help="folder of the generated store (made or reused)")
    parser.add_argument("--keep", action="store_true", help="keep the site folder (default: removed after measuring)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command; medians reported")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    store = args.store.resolve()
    print(f"load: {os.getloadavg()[0]:.1f} (1-min), {os.cpu_count()} CPUs", flush=True)
    n, gen_seconds, reused = prepare_store(store)
    if reused:
        print(f"store: reusing the complete generated store in {store} ({n} records; marker {MARKER})")
    else:
        print(f"store: generated {n} records into {store} in {gen_seconds:.1f} s (not part of the comparison)")
    on_disk = sum(1 for _ in Store(store).record_files())
    if on_disk != n:
        print(f"warning: {on_disk} record files on disk, the generator wrote {n}")
    work = Path(tempfile.mkdtemp(prefix="bench_report_"))
    site = work / "site"
    try:
        reports, tables = measure(store, site, args.repeat)
        megabytes, allocated, n_files = folder_megabytes(site)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report_s, table_s = statistics.median(reports), statistics.median(tables)
    label = "median of " + str(args.repeat) if args.repeat > 1 else "one run"
    print(f"adbench report: {report_s:.2f} s ({label}; target <= {TARGET_SECONDS:.0f} s)")
    print(f"adbench table:  {table_s:.2f} s ({label}; baseline, same store)")
    print(f"report / table: {report_s / table_s:.1f}x")
    print(f"site: {megabytes:.2f} MB in {n_files} files, {allocated:.2f} MB allocated on disk "
          f"(target <= {TARGET_MEGABYTES:.0f} MB, on file sizes)"
          + (f", kept in {site}" if args.keep else ", removed"))
    print(f"load after: {os.getloadavg()[0]:.1f}")
    print(json.dumps(summary(on_disk, report_s, table_s, megabytes)))


if __name__ == "__main__":
    main()
