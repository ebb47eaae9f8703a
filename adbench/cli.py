"""``adbench`` command line: run, list, table (``--reference``, ``--ci``, ``--efficiency``),
evaluate (metrics again from saved predictions), compare (paired bootstrap), plot.

Exit codes: 0 everything ok; 1 some job failed (its record says why; the others ran);
2 a user error (bad option, unknown name, bad data, a results folder that cannot be written),
reported as one ``error: ...`` line per problem, without traceback unless ``--debug``;
130 interrupted (Ctrl-C); 143 terminated (SIGTERM).
"""
from __future__ import annotations

import sys
import traceback
from typing import Optional

import click

from adbench.errors import Terminated, UserError
from adbench.options import RUN_OPTIONS


def _fail(exc: UserError, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    for problem in exc.problems:
        click.echo(f"error: {problem}", err=True)
    sys.exit(exc.exit_code)


def _guard(func):
    """Turn UserErrors into one line each and exit code 2; click usage errors stay click's."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = bool(kwargs.get("debug"))
        from adbench.results import store

        store.reset_warnings()  # one warning per bad file and command (tests run many in one process)
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            _fail(exc, debug)
        except Terminated:
            click.echo("terminated (SIGTERM): jobs in flight were stopped, finished jobs are stored; "
                       "rerun the same command to resume", err=True)
            sys.exit(Terminated.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished jobs are stored; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


def _raise_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C in a run (children stopped, finished records kept)."""
    import signal

    def handler(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. an embedding application): leave it alone
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="adbench")
def main() -> None:
    """adbench: benchmark visual anomaly detectors over dataset categories."""
    # file names that are not valid UTF-8 (surrogate-escaped by Python) must print, not crash
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


# --------------------------------------------------------------------------------------------
def click_option(option):
    """The click option of one run option declaration (``adbench.options.Option``)."""
    kwargs = dict(default=option.default, help=option.help, show_default=option.show_default)
    if option.metavar:
        kwargs["metavar"] = option.metavar
    if option.multiple:
        kwargs["multiple"] = True
    elif option.type is bool:
        kwargs["is_flag"] = True
        if option.flag_value is not None:
            kwargs["flag_value"] = option.flag_value
    elif isinstance(option.type, tuple):
        kwargs["type"] = click.Choice(list(option.type))
    elif option.path:
        kwargs["type"] = click.Path(dir_okay=option.path != "file", file_okay=option.path != "dir")
    else:
        kwargs["type"] = option.type
    return click.option(*option.flags, option.name, **kwargs)


def run_options(options):
    """Decorate a command with one click option per declaration, in declaration order."""

    def decorate(func):
        for option in reversed(options):
            func = click_option(option)(func)
        return func

    return decorate


def make_run_command(options):
    """``adbench run``: its options are exactly ``options`` (``adbench.options.RUN_OPTIONS``)."""

    @click.command("run")
    @run_options(options)
    @click.option("--debug", is_flag=True, help="Tracebacks for user errors.")
    @_guard
    def run_cmd(debug, **values) -> None:
        """Run methods over a dataset's categories; print the per-category table."""
        from adbench.options import options_class
        from adbench.run.runner import RunOptions

        _raise_on_sigterm()
        execute_run((RunOptions if options is RUN_OPTIONS else options_class(options))(**values))

    return run_cmd


def execute_run(opts) -> None:
    """Run the grid ``opts`` describes, print the final table and the summary line, exit with the
    run's code (0 all ok, 1 a job failed)."""
    from adbench.errors import ConfigError
    from adbench.results.records import METRIC_KEYS
    from adbench.reporting.tables import build_tables, render
    from adbench.run.runner import run

    metrics = [m.strip() for m in opts.metric.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown:
        raise ConfigError(f"--metric {', '.join(unknown)}: unknown (known: {', '.join(METRIC_KEYS)})")
    summary = run(opts)
    tables = build_tables(summary.records, metrics)
    if tables:
        click.echo(render(tables, "md"))
    click.echo(f"{summary.line()}; records in {summary.plan.store.root} ({summary.seconds:.1f} s)", err=True)
    sys.exit(summary.exit_code)


main.add_command(make_run_command(RUN_OPTIONS))


# --------------------------------------------------------------------------------------------
@main.command("list")
@click.argument("what", type=click.Choice(["methods", "datasets"]), required=False)
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE")
@click.option("--debug", is_flag=True)
@_guard
def list_cmd(what: Optional[str], plugins, debug) -> None:
    """List registered methods or datasets (both by default) and where each came from."""
    from adbench.registry import load_plugins

    load_plugins(list(plugins))
    for i, kind in enumerate([what] if what else ["methods", "datasets"]):
        if i:
            click.echo("")
        _list_one(kind)


def _list_one(what: str) -> None:
    from tabulate import tabulate

    from adbench.registry import DATASETS, METHODS

    registry = METHODS if what == "methods" else DATASETS
    registry.load()
    rows = []
    for name in registry.names():
        entry = registry.entries[name]
        if what == "methods":
            cls = entry.obj
            rows.append([name, entry.origin, ",".join(getattr(cls, "protocols", ("single",))),
                         "yes" if getattr(cls, "produces_maps", False) else "no",
                         ",".join(sorted(getattr(cls, "PROFILES", {}) or {"paper": {}}))])
        else:
            cls = entry.obj
            known = sorted(getattr(cls, "KNOWN_CATEGORIES", {}) or {})
            cats = ", ".join(known[:6]) + (f", ... ({len(known)})" if len(known) > 6 else "")
            rows.append([name, entry.origin, "no" if not getattr(cls, "needs_root", True) else "yes",
                         cats or "(found on disk)"])
    headers = (["method", "origin", "protocols", "maps", "profiles"] if what == "methods"
               else ["dataset", "origin", "needs --data-root", "categories"])
    click.echo(tabulate(rows, headers=headers, tablefmt="simple"))
    if registry.import_errors:
        click.echo(f"\n{what[:-1]} modules that failed to import:")
        for module, error in sorted(registry.import_errors.items()):
            click.echo(f"  {module}: {error}")


# --------------------------------------------------------------------------------------------
@main.command("table")
@click.option("--results", default="results", show_default=True, help="Results folder (records).")
@click.option("--dataset", "-d", default=None, help="Only this dataset.")
@click.option("--metric", default="image_auroc,pixel_auroc", show_default=True, help="Comma list of metrics.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default=None,
              help="Output format [default: md; csv with --long].")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to a file.")
@click.option("--long", "long_", is_flag=True, help="One row per (method, dataset, category, metric, value).")
@click.option("--reference", is_flag=True, help="Ours next to published numbers (results/reference/*.csv).")
@click.option("--reference-all", "reference_all", is_flag=True,
              help="As --reference, plus the papers' ablation rows (role=ablation in the CSVs).")
@click.option("--reference-dir", default=None, help="Folder of reference CSVs [default: the checkout's].")
@click.option("--ci", is_flag=True, help="Bootstrap 95% intervals (image AUROC; pixel AUROC from saved predictions).")
@click.option("--efficiency", is_flag=True, help="Fit time, throughput, memory, parameters, FLOPs, hardware.")
@click.option("--debug", is_flag=True)
@_guard
def table_cmd(results, dataset, metric, fmt, out: Optional[str], long_, reference, reference_all, reference_dir,
              ci, efficiency, debug) -> None:
    """Rebuild per-category tables from stored records."""
    from pathlib import Path

    from adbench.errors import ConfigError, DataError
    from adbench.results.store import Store
    from adbench.reporting.tables import build_tables, render, render_long

    root = Path(results)
    if not root.is_dir():
        raise DataError(f"--results {root}: folder not found")
    records = list(Store(root).records(dataset))
    if not records:
        raise DataError(f"--results {root}: no records" + (f" for dataset {dataset!r}" if dataset else ""))
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    known = set()
    for r in records:
        known.update((r.get("metrics") or {}).keys())
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise ConfigError(f"--metric {', '.join(unknown)}: not in the records (known: {', '.join(sorted(known))})")
    if long_:
        text = render_long(records, metrics, fmt=fmt or "csv")
    elif reference or reference_all:
        from adbench.reporting import reference as ref

        tables = ref.comparison_tables(records, ref.load(reference_dir), metrics, include_ablation=reference_all)
        if not tables:
            raise DataError(f"--results {root}: no records of a method and metric with published numbers")
        text = render(tables, fmt or "md")
    elif efficiency:
        from adbench.reporting.efficiency import efficiency_table

        text = render([efficiency_table(records)], fmt or "md")
    elif ci:
        from adbench.reporting.bootstrap import ci_tables

        text = render(ci_tables(records, metrics), fmt or "md")
    else:
        text = render(build_tables(records, metrics), fmt or "md")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, errors="surrogateescape")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------------------------
@main.command("report")
@click.option("--results", default="results", show_default=True, help="Results folder (records).")
@click.option("--out", default=None, help="Site folder [default: <results>/report; <results>/report.html "
                                          "with --single-file].")
@click.option("--dataset", "-d", "datasets", multiple=True, help="Only this dataset (repeatable).")
@click.option("--single-file", is_flag=True, help="One HTML file with everything inlined (for mail).")
@click.option("--reference-dir", default=None, help="Folder of reference CSVs [default: the checkout's].")
@click.option("--debug", is_flag=True)
@_guard
def report_cmd(results, out, datasets, single_file, reference_dir, debug) -> None:
    """A static report site from stored records: overview, leaderboards with intervals and ranks,
    per-category tables, versus published, efficiency, galleries. Opens from disk, no network."""
    from adbench.reporting.site import build_report

    command = " ".join(["adbench report", f"--results {results}"] + (["--out", out] if out else [])
                       + [f"--dataset {d}" for d in datasets] + (["--single-file"] if single_file else [])
                       + ([f"--reference-dir {reference_dir}"] if reference_dir else []))
    path = build_report(results, out, list(datasets), single_file=single_file, command=command,
                        reference_dir=reference_dir)
    click.echo(f"wrote {path}" + ("" if single_file else f" (open {path}/index.html)"), err=True)


@main.command("evaluate")
@click.option("--results", default="results", show_default=True, help="Results folder (records + .npz).")
@click.option("--dataset", "-d", default=None, help="Only this dataset.")
@click.option("--tolerance", default=1e-3, show_default=True, type=float,
              help="Largest |recomputed - recorded| accepted (maps are stored as float16).")
@click.option("--debug", is_flag=True)
@_guard
def evaluate_cmd(results, dataset, tolerance, debug) -> None:
    """Recompute metrics from saved predictions (run --save-predictions) and check the records."""
    from pathlib import Path

    from tabulate import tabulate

    from adbench.results import predictions
    from adbench.errors import DataError
    from adbench.results.store import Store

    root = Path(results)
    if not root.is_dir():
        raise DataError(f"--results {root}: folder not found")
    rows, worst, n = [], 0.0, 0
    for record in Store(root).records(dataset):
        arrays = predictions.load(record)
        if arrays is None:
            continue
        n += 1
        for row in predictions.compare(record, arrays):
            worst = max(worst, row["abs_diff"] or 0.0)
            rows.append([record["method"], record["dataset"], record["category"], record.get("seed"),
                         row["metric"], row["recorded"], row["recomputed"], row["abs_diff"]])
    if not n:
        raise DataError(f"--results {root}: no records with saved predictions (run with --save-predictions)")
    click.echo(tabulate(rows, headers=["method", "dataset", "category", "seed", "metric", "recorded",
                                       "recomputed", "abs diff"], tablefmt="github", floatfmt=".6f"))
    click.echo(f"{n} record(s) re-evaluated; largest difference {worst:.2e} (tolerance {tolerance:g})", err=True)
    sys.exit(0 if worst <= tolerance else 1)


# --------------------------------------------------------------------------------------------
@main.command("plot")
@click.argument("kind", type=click.Choice(["heatmap", "bars", "cost", "gallery"]))
@click.option("--results", default="results", show_default=True, help="Results folder (records).")
@click.option("--dataset", "-d", default=None, help="Only this dataset.")
@click.option("--metric", default="image_auroc", show_default=True)
@click.option("--x", "x_key", type=click.Choice(["fit_seconds", "test_throughput"]), default="fit_seconds",
              show_default=True, help="cost: the x axis.")
@click.option("--method", "-m", default=None, help="gallery: the method (and --category) whose maps to show.")
@click.option("--category", "-c", default=None)
@click.option("--sample", "samples", multiple=True, help="gallery: a sample path (suffix); default: worst-scored.")
@click.option("-n", "n_samples", default=4, show_default=True, help="gallery: number of rows.")
@click.option("--out", required=True, help="Output file stem (writes .png and .pdf).")
@click.option("--debug", is_flag=True)
@_guard
def plot_cmd(kind, results, dataset, metric, x_key, method, category, samples, n_samples, out, debug) -> None:
    """Figures from stored records: heatmap, bars (means with CIs), cost (vs accuracy), gallery."""
    from pathlib import Path

    from adbench.reporting import plots
    from adbench.results import predictions
    from adbench.errors import ConfigError, DataError
    from adbench.results.store import Store

    root = Path(results)
    records = [r for r in Store(root).records(dataset) if r.get("status") == "ok"] if root.is_dir() else []
    if not records:
        raise DataError(f"--results {root}: no ok records" + (f" for dataset {dataset!r}" if dataset else ""))
    try:
        if kind == "gallery":
            chosen = [r for r in records if (method is None or r["method"] == method)
                      and (category is None or r["category"] == category) and predictions.has_predictions(r)]
            if not chosen:
                raise DataError("gallery: no record with saved predictions matches --method/--category")
            paths = plots.gallery(chosen[0], out, n=n_samples, paths=list(samples) or None)
        elif kind == "heatmap":
            paths = plots.heatmap(records, metric, out, dataset)
        elif kind == "bars":
            paths = plots.bars(records, metric, out, dataset)
        else:
            paths = plots.cost(records, metric, out, x=x_key, dataset=dataset)
    except ValueError as exc:
        raise ConfigError(f"plot {kind}: {exc}") from exc
    for p in paths:
        click.echo(f"wrote {p}", err=True)


# --------------------------------------------------------------------------------------------
@main.command("compare")
@click.argument("method_a")
@click.argument("method_b")
@click.option("--results", default="results", show_default=True, help="Results folder (records + .npz).")
@click.option("--dataset", "-d", required=True)
@click.option("--category", "-c", default=None, help="Category or comma list (default: all both have).")
@click.option("--n-boot", default=2000, show_default=True)
@click.option("--debug", is_flag=True)
@_guard
def compare_cmd(method_a, method_b, results, dataset, category, n_boot, debug) -> None:
    """Paired bootstrap of image AUROC(A) - AUROC(B) on the same test images (saved predictions)."""
    from pathlib import Path

    from tabulate import tabulate

    from adbench.reporting.bootstrap import compare_records
    from adbench.results.predictions import has_predictions
    from adbench.errors import DataError
    from adbench.results.store import Store

    wanted = set(category.split(",")) if category else None
    by = {}
    for r in Store(Path(results)).records(dataset):
        if r.get("status") == "ok" and has_predictions(r) and (wanted is None or r["category"] in wanted):
            by.setdefault((r["method"], r["category"]), r)  # first seed found
    cats = sorted({c for m, c in by if m == method_a} & {c for m, c in by if m == method_b})
    if not cats:
        raise DataError(f"no category where both {method_a} and {method_b} have saved predictions in {results}")
    rows = []
    for c in cats:
        try:
            res = compare_records(by[(method_a, c)], by[(method_b, c)], n_boot=n_boot)
        except ValueError as exc:
            raise DataError(f"{c}: {exc}") from exc
        if res is None:  # a saved-predictions file that could not be read (warned)
            continue
        verdict = "A better" if res["low"] > 0 else "B better" if res["high"] < 0 else "no resolvable difference"
        rows.append([c, f"{res['diff']:+.4f}", f"[{res['low']:+.4f}, {res['high']:+.4f}]", f"{res['p']:.3f}", verdict])
    if not rows:
        raise DataError(f"no category where the saved predictions of both {method_a} and {method_b} can be read")
    click.echo(f"image AUROC: A = {method_a}, B = {method_b}; paired bootstrap over test images ({n_boot} replicates)")
    click.echo(tabulate(rows, headers=["category", "A - B", "95% CI", "p", "verdict"], tablefmt="github",
                        disable_numparse=True))


if __name__ == "__main__":  # pragma: no cover
    main()
