"""``adbench`` command line: run, list, table.

Exit codes: 0 everything ok; 1 some job failed (its record says why; the others ran);
2 a user error (bad option, unknown name, bad data), reported as one ``error: ...`` line per
problem before any training starts, without traceback unless ``--debug``; 130 interrupted.
"""
from __future__ import annotations

import sys
import traceback
from typing import Optional

import click

from adbench.errors import UserError


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
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            _fail(exc, debug)
        except KeyboardInterrupt:
            click.echo("interrupted: finished jobs are stored; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="adbench")
def main() -> None:
    """adbench: benchmark visual anomaly detectors over dataset categories."""


# --------------------------------------------------------------------------------------------
@main.command("run")
@click.option("--method", "-m", default="all", show_default=True, help="Method name, comma list, or 'all'.")
@click.option("--dataset", "-d", default="synthetic", show_default=True, help="Dataset adapter name.")
@click.option("--data-root", default=None, help="Dataset folder (not needed for synthetic).")
@click.option("--category", "-c", default=None, help="Category name or comma list (default: all found).")
@click.option("--profile", default="paper", show_default=True, help="Config profile: paper or quick.")
@click.option("--set", "set_options", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="YAML overrides: flat keys, and/or methods: {name: {...}}.")
@click.option("--seed", default="0", show_default=True, help="Seed or comma list (one job per seed).")
@click.option("--protocol", type=click.Choice(["single", "unified"]), default="single", show_default=True)
@click.option("--results", default="results", show_default=True, help="Results folder (records).")
@click.option("--weights", default=None, help="Backbone weights: a file, or 'random' (tests).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="Import a module that registers more.")
@click.option("--rerun", is_flag=True, help="Run jobs again even when their records exist.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--metric", default="image_auroc,pixel_auroc", show_default=True, help="Metrics of the final table.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Tracebacks for user errors.")
@_guard
def run_cmd(method, dataset, data_root, category, profile, set_options, config_file, seed, protocol,
            results, weights, device, plugins, rerun, executor, metric, quiet, debug) -> None:
    """Run methods over a dataset's categories; print the per-category table."""
    from adbench.errors import ConfigError
    from adbench.records import METRIC_KEYS
    from adbench.runner import RunOptions, run
    from adbench.tables import build_tables, render

    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown:
        raise ConfigError(f"--metric {', '.join(unknown)}: unknown (known: {', '.join(METRIC_KEYS)})")

    opts = RunOptions(
        method=method, dataset=dataset, data_root=data_root, category=category, profile=profile,
        set_options=list(set_options), config_file=config_file, seed=seed, protocol=protocol,
        results=results, weights=weights, device=device, plugins=list(plugins), rerun=rerun,
        executor=executor, progress=not quiet,
    )
    summary = run(opts)
    tables = build_tables(summary.records, metrics)
    if tables:
        click.echo(render(tables, "md"))
    click.echo(
        f"{summary.n_ok} job(s) ok, {summary.n_failed} failed, {len(summary.plan.skipped_done)} already done; "
        f"records in {summary.plan.store.root} ({summary.seconds:.1f} s)",
        err=True,
    )
    sys.exit(summary.exit_code)


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
@click.option("--debug", is_flag=True)
@_guard
def table_cmd(results, dataset, metric, fmt, out: Optional[str], long_, debug) -> None:
    """Rebuild per-category tables from stored records."""
    from pathlib import Path

    from adbench.errors import ConfigError, DataError
    from adbench.store import Store
    from adbench.tables import build_tables, render, render_long

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
    else:
        text = render(build_tables(records, metrics), fmt or "md")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
