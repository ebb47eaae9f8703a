"""The runner: turn a command line into a validated job grid, run what is not done, store it.

Everything a user can get wrong is checked before the first job starts, and all problems of
one kind are reported together: names (methods, dataset, plugins), options (--set keys and
types, --config, --seed, --protocol, --device), the data root, the categories, and every
selected category's index (each file opens, masks exist and match their image's size, train
split not empty). So a typo in the last category never costs the hours spent on the first.

Then each job runs in its own process (``executors.py``); its records are written atomically
as soon as it finishes (``store.py``). Rerunning the same command skips jobs whose records all
exist with status ``ok``; failed jobs are retried; ``--rerun`` forces everything.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from adbench.config import SET_SOURCE, load_yaml_config, merge_overrides, parse_set_options, resolve_config, yaml_source
from adbench.errors import ConfigError, DataError
from adbench import predictions
from adbench.jobs import PROTOCOLS, Job, parse_list, parse_seeds
from adbench.predictions import ATTACHED
from adbench.store import Store


@dataclass
class RunOptions:
    method: str = "all"
    dataset: str = "synthetic"
    data_root: Optional[str] = None
    category: Optional[str] = None
    profile: str = "paper"
    set_options: list[str] = field(default_factory=list)
    config_file: Optional[str] = None
    seed: str = "0"
    protocol: str = "single"
    results: str = "results"
    weights: Optional[str] = None
    device: str = "auto"
    plugins: list[str] = field(default_factory=list)
    rerun: bool = False
    executor: str = "local"
    progress: bool = True
    save_predictions: bool = False
    jobs: Optional[int] = None  # jobs at once (local): default one per GPU, 1 on CPU
    job_timeout: Optional[float] = None  # seconds; a job running longer fails (checkpoint kept)
    cpus_per_job: Optional[float] = None  # Ray: CPUs each job asks for (and uses as threads)
    gpus_per_job: Optional[float] = None  # Ray: GPUs each job asks for
    memory_per_job: Optional[float] = None  # Ray: GiB of memory each job asks for
    checkpoint_every: float = 600.0  # seconds between checkpoints inside a job; 0: none
    checkpoint_dir: Optional[str] = None  # default: <results>/.checkpoints
    keep_checkpoints: bool = False  # keep each job's final checkpoint (the trained model)
    workdir: Optional[str] = None  # where jobs keep work files; default: the system temp folder
    precision: str = "fp32"  # fp32 | tf32 | bf16 (adbench.precision)
    workers: Optional[int] = None  # DataLoader workers per job; None: GPU jobs their CPUs - 1 (max 8), CPU jobs 0
    cache_gb: Optional[float] = None  # RAM per job for decoded images / features; None: auto


@dataclass
class Plan:
    jobs: list[Job]
    todo: list[Job]
    skipped_done: list[Job]
    notes: list[str]
    store: Store


@dataclass
class RunSummary:
    plan: Plan
    records: list[dict[str, Any]]  # the records of every planned job (run now or earlier)
    n_ok: int = 0
    n_failed: int = 0
    n_elsewhere: int = 0  # claimed by another live run when this run reached them
    n_done_meanwhile: int = 0  # finished by another run after this run was planned
    seconds: float = 0.0

    @property
    def n_already_done(self) -> int:
        return len(self.plan.skipped_done) + self.n_done_meanwhile

    def line(self) -> str:
        """``N job(s) ok, M failed, K already done, C running elsewhere``."""
        text = f"{self.n_ok} job(s) ok, {self.n_failed} failed, {self.n_already_done} already done"
        if self.n_elsewhere:
            text += f", {self.n_elsewhere} running elsewhere"
        return text

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0


# --------------------------------------------------------------------------------------------
# Planning and validation
# --------------------------------------------------------------------------------------------
def plan_run(opts: RunOptions) -> Plan:
    from adbench.registry import DATASETS, METHODS, load_plugins

    load_plugins(list(opts.plugins))
    METHODS.load()
    DATASETS.load()

    if opts.protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {opts.protocol!r}: expected single or unified")
    _check_device(opts.device, opts.executor)
    if opts.jobs is not None and opts.jobs < 1:
        raise ConfigError(f"--jobs {opts.jobs}: must be >= 1")
    if opts.job_timeout is not None and opts.job_timeout <= 0:
        raise ConfigError(f"--job-timeout {opts.job_timeout}: must be > 0 seconds")
    seeds = parse_seeds(opts.seed)
    methods = list(dict.fromkeys(METHODS.resolve_list("all" if opts.method is None else opts.method)))
    if not methods:
        raise ConfigError("--method: no methods registered")
    dataset_cls = DATASETS.get(opts.dataset)

    notes: list[str] = []
    if ("all" if opts.method is None else opts.method).strip() == "all":
        methods = _with_profile(methods, opts.profile, notes)
    if opts.protocol == "unified":
        able = [m for m in methods if "unified" in getattr(METHODS.get(m), "protocols", ("single",))]
        unable = [m for m in methods if m not in able]
        if not able:
            raise ConfigError(
                f"--protocol unified: {', '.join(unable)} support only the single protocol "
                f"(a method lists 'unified' in Detector.protocols to train over several categories)"
            )
        if unable:
            notes.append(f"skipping {', '.join(unable)}: no unified protocol (single only)")
        methods = able

    configs = resolve_configs(methods, opts, notes)
    weights = _check_weights(opts.weights)
    notes.extend(check_pretrained_weights(configs, opts.profile, weights))

    adapter = dataset_cls(opts.data_root)
    categories = adapter.select(parse_list(opts.category))
    validate_categories(adapter, categories)
    kinds = {c: adapter.category_info(c).kind for c in categories}

    data_root = str(Path(opts.data_root).expanduser().resolve()) if opts.data_root else None
    from adbench.precision import check as check_precision

    precision = check_precision(opts.precision)
    jobs: list[Job] = []
    fp32_only = [m for m in methods if precision not in METHODS.get(m).precisions]
    if fp32_only:
        notes.append(f"--precision {precision} does not apply to {', '.join(fp32_only)} (no networks under "
                     f"autocast): fp32 there, and their records say so")
    for method in methods:
        config = configs[method]
        groups = [[c] for c in categories] if opts.protocol == "single" else [list(categories)]
        for seed in seeds:
            for cats in groups:
                jobs.append(Job(
                    method=method, dataset=opts.dataset, data_root=data_root, categories=cats,
                    seed=seed, protocol=opts.protocol, profile=opts.profile,
                    config=_plain(config.to_dict()), config_hash=config.config_hash(),
                    weights=weights, precision="fp32" if method in fp32_only else precision, device=opts.device, progress=opts.progress,
                    save_predictions=opts.save_predictions,
                    plugins=list(opts.plugins), category_kinds={c: kinds[c] for c in cats},
                ))
    jobs = list({job.key(): job for job in jobs}.values())  # `--method a,a` runs a once
    store = Store(opts.results)
    store.check_writable()
    if opts.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every {opts.checkpoint_every}: must be >= 0 (0 turns checkpoints off)")
    ckpt_root = Path(opts.checkpoint_dir).expanduser().resolve() if opts.checkpoint_dir else store.root / ".checkpoints"
    check_input_options(opts)
    for job in jobs:
        job.workers = opts.workers
        job.cache_bytes = None if opts.cache_gb is None else int(opts.cache_gb * 2**30)
    workdir = check_workdir(opts.workdir)
    for job in jobs:
        job.workdir = workdir
        job.checkpoint_every = float(opts.checkpoint_every)
        job.checkpoint_path = str(checkpoint_path(ckpt_root, job)) if opts.checkpoint_every > 0 else None
    if opts.rerun:
        todo, done = list(jobs), []
    else:
        todo = [j for j in jobs if not store.is_done(j)]
        done = [j for j in jobs if j not in todo]
    return Plan(jobs=jobs, todo=todo, skipped_done=done, notes=notes, store=store)


def check_input_options(opts: RunOptions) -> None:
    """``--workers`` and ``--cache-gb`` (one exit-2 line each)."""
    if opts.workers is not None and int(opts.workers) < 0:
        raise ConfigError(f"--workers {opts.workers}: must be 0 (load in the job's own process) or more")
    if opts.cache_gb is not None and not float(opts.cache_gb) >= 0:
        raise ConfigError(f"--cache-gb {opts.cache_gb}: must be 0 (always spill to --workdir) or more")


def check_workdir(workdir: Optional[str]) -> Optional[str]:
    """``--workdir``: created if missing, and it must take a file (one exit-2 line otherwise,
    before any job), since every job's spill files and caches go there."""
    if not workdir:
        return None
    path = Path(workdir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".adbench-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--workdir {workdir}: cannot write there ({exc.strerror or exc})") from None
    return str(path)


def resolve_configs(methods: list[str], opts: RunOptions, notes: Optional[list[str]] = None) -> dict[str, Any]:
    """Resolve every method's config; unknown keys and bad values are ConfigErrors.

    Flat keys (YAML top level and ``--set``) apply to each selected method that has the field;
    a flat key no selected method has is an error (a typo must not be ignored). Keys under the
    YAML's ``methods: {name: ...}`` apply to that method and are strict. With a single method,
    every key is strict, as ``resolve_config`` does it.
    """
    from adbench.registry import METHODS

    sets = parse_set_options(opts.set_options)
    yaml_data = load_yaml_config(opts.config_file) if opts.config_file else {}
    per_method_yaml = yaml_data.get("methods") or {}
    if not isinstance(per_method_yaml, dict):
        raise ConfigError(f"--config {opts.config_file}: 'methods' must map method names to settings")
    flat_yaml = {k: v for k, v in yaml_data.items() if k != "methods"}

    field_names = {m: {f.name for f in dataclasses.fields(METHODS.get(m).Config)} for m in methods}
    every = set().union(*field_names.values())
    for source, mapping in (("--config " + str(opts.config_file) + ": key", flat_yaml), ("--set", sets)):
        for key in mapping:
            if key not in every:
                close = difflib.get_close_matches(key, sorted(every), n=2)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise ConfigError(f"{source} {key}: unknown key for {', '.join(methods)}{hint}")
            lacking = [m for m in methods if key not in field_names[m]]
            if lacking and notes is not None:
                notes.append(f"{source} {key} does not apply to {', '.join(lacking)} (no such field)")

    configs = {}
    for method in methods:
        cls = METHODS.get(method)
        names = field_names[method]
        own = per_method_yaml.get(method) or {}
        if not isinstance(own, dict):
            raise ConfigError(f"--config {opts.config_file}: methods.{method} must be a mapping")
        overrides, sources = merge_overrides([
            (yaml_source(opts.config_file), {k: v for k, v in flat_yaml.items() if k in names}),
            (yaml_source(opts.config_file, method), own),
            (SET_SOURCE, {k: v for k, v in sets.items() if k in names}),
        ])
        configs[method] = resolve_config(cls.Config, cls.PROFILES, opts.profile, overrides,
                                         method=method, strict=True, sources=sources)
    return configs


def checkpoint_path(root: Path, job: Job) -> Path:
    """``<root>/<dataset>/<method>/<record stem>.ckpt``: one checkpoint per job (a unified job
    is named after its first category's record, which names the whole training set)."""
    from adbench.store import _safe

    stem = Path(job.record_name(job.categories[0])).stem
    return Path(root) / _safe(job.dataset) / _safe(job.method) / f"{stem}.ckpt"


def _with_profile(methods: list[str], profile: str, notes: list[str]) -> list[str]:
    """``--method all``: the methods that define ``profile``; the others are skipped with a note
    each (``--profile miad`` runs the six methods the MIAD benchmark ran). A method named
    explicitly without the profile stays an error (``resolve_config`` says which profiles exist)."""
    from adbench.registry import METHODS

    able = [m for m in methods if profile == "paper" or profile in METHODS.get(m).PROFILES]
    if not able:
        raise ConfigError(f"--profile {profile!r}: no registered method defines it")
    for m in methods:
        if m not in able:
            notes.append(f"skipping {m}: it has no {profile!r} profile")
    return able


def check_pretrained_weights(configs: dict[str, Any], profile: str, weights: Optional[str]) -> list[str]:
    """Every exact timm tag the grid loads must be available before any job starts: one
    WeightsError (exit 2) naming each missing tag, instead of a failed record per job. Returns
    notes: tags that ``quick*`` profiles will replace by random weights."""
    from adbench.detector import profile_allows_random_weights
    from adbench.registry import METHODS
    from adbench.weights import check_available, exact_tag

    needs: dict[str, list[str]] = {}
    for method, config in configs.items():
        for tag in METHODS.get(method).pretrained_tags(config):
            needs.setdefault(exact_tag(tag), []).append(method)
    allowed = {m: profile_allows_random_weights(profile) for m in configs}
    return check_available(needs, weights, random_allowed=allowed)


def validate_categories(adapter, categories: list[str]) -> None:
    """Index and validate every selected category; one DataError listing every problem."""
    from adbench.dataset import validate_index

    problems: list[str] = []
    for category in categories:
        try:
            validate_index(adapter.index(category), category=category)
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        head = problems[0] if len(problems) == 1 else f"{len(problems)} data problems"
        raise DataError(head, problems=problems)


def _check_weights(weights: Optional[str]) -> Optional[str]:
    """``--weights``: None (default resolution), ``random``, or an existing file (made absolute,
    so job processes and Ray workers find it whatever their working folder)."""
    if weights in (None, "", "random"):
        return weights or None
    path = Path(weights).expanduser()
    if not path.is_file():
        from adbench.errors import WeightsError

        raise WeightsError(f"--weights {weights}: file not found (give a weights file or 'random')")
    return str(path.resolve())


def _check_device(device: str, executor: str = "local") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked without initialising CUDA here
    (``adbench.gpus``). Under Ray the GPUs are the cluster's, not this machine's."""
    if device in ("auto", "cpu"):
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if executor == "ray":
            return
        from adbench.gpus import visible_gpus

        gpus = visible_gpus()
        if not gpus:
            raise ConfigError(f"--device {device}: no CUDA GPU is visible on this machine")
        if ":" in device and int(device[5:]) >= len(gpus):
            raise ConfigError(f"--device {device}: no such GPU here ({len(gpus)} visible: cuda:0"
                              f"{f' to cuda:{len(gpus) - 1}' if len(gpus) > 1 else ''})")
        return
    raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def local_resources(opts: "RunOptions") -> tuple[int, list[int], Optional[int]]:
    """(jobs at once, GPUs to pin them to, CPU threads per job) for the local executor.

    GPUs: ``--device cuda:N`` pins every job to the N-th visible GPU (torch's numbering, which
    counts within ``CUDA_VISIBLE_DEVICES``); ``cuda`` / ``auto`` use every visible GPU,
    one job per GPU by default; ``cpu`` none. ``--jobs`` overrides the count. Threads: the
    machine's cores divided between the jobs that run at once (unset for a single job: torch's
    own default, all cores)."""
    from adbench.gpus import visible_gpus

    if opts.device == "cpu":
        gpus: list[int] = []
    elif opts.device.startswith("cuda:"):
        gpus = [visible_gpus()[int(opts.device[5:])].index]
    else:
        gpus = [g.index for g in visible_gpus()]
    if opts.jobs:
        n_jobs = int(opts.jobs)
    elif gpus and not opts.device.startswith("cuda:"):
        n_jobs = len(gpus)  # one job per GPU
    else:
        n_jobs = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // n_jobs) if n_jobs > 1 else None
    return n_jobs, gpus, threads


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def run(opts: RunOptions, *, log=None) -> RunSummary:
    """Plan, validate, execute what is not done, and return the records of every planned job."""
    from adbench.claims import ClaimBook
    from adbench.executors import make_executor
    from adbench.result_writer import ResultWriter
    from adbench.workdirs import remove_orphaned_workdirs

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    plan = plan_run(opts)
    for note in plan.notes:
        log(f"note: {note}")
    executor = make_executor(opts) if plan.todo else None  # no Ray start when nothing is left
    removed = plan.store.clean_stale_tmp()
    if removed:
        log(f"note: removed {removed} temporary file(s) left by an interrupted run")
    orphans = remove_orphaned_workdirs(check_workdir(opts.workdir))
    if orphans:
        log(f"note: removed {orphans} work folder(s) left by killed jobs")
    if plan.skipped_done:
        log(f"{len(plan.skipped_done)} of {len(plan.jobs)} job(s) already done in {plan.store.root} "
            f"(skipped; --rerun forces them)")

    summary = RunSummary(plan=plan, records=[])
    bar = _grid_bar(len(plan.todo), opts.progress)
    writer = ResultWriter(plan.store, keep_checkpoints=opts.keep_checkpoints)
    claims = ClaimBook(plan.store.root)
    claim_of = {}

    def start(job: Job) -> bool:
        """Claim the job right before it runs; skip it when a live run holds it, or when another
        run finished it since this run was planned."""
        path = claims.path_for(job.dataset, job.method, Path(job.record_name(job.categories[0])).stem)
        holder = claims.acquire(path, job.label)
        if holder is not None:
            summary.n_elsewhere += 1
            _write_line(bar, f"{job.label}: running elsewhere ({holder.describe()}); skipped")
            _advance(bar)
            return False
        if not opts.rerun and plan.store.is_done(job):
            claims.release(path)
            summary.n_done_meanwhile += 1
            _write_line(bar, f"{job.label}: finished by another run meanwhile; skipped")
            _advance(bar)
            return False
        claim_of[job.key()] = path
        return True

    def on_done(job: Job, records: list[dict[str, Any]]) -> None:
        try:
            notes = writer.accept(job, records)
        finally:
            path = claim_of.pop(job.key(), None)
            if path is not None:
                claims.release(path)
        failed = [r for r in records if r.get("status") != "ok"]
        status = "failed: " + str(failed[0].get("error")) if failed else "ok"
        line = f"{job.label}: {status}"
        if failed:
            summary.n_failed += 1
            _write_line(bar, "FAILED " + line)
        else:
            summary.n_ok += 1
            if opts.progress:
                _write_line(bar, line + _short_metrics(records))
        for note in notes:
            _write_line(bar, f"note: {note}")
        _advance(bar)

    try:
        if executor is not None:
            executor.run(plan.todo, on_done, start=start)
    finally:
        claims.release_all()
        if bar is not None:
            bar.close()
    for job in plan.jobs:
        for path in plan.store.record_paths(job):
            record = plan.store.read(path)
            if record is not None:
                summary.records.append(record)
    summary.seconds = time.perf_counter() - t0
    return summary


def _advance(bar) -> None:
    if bar is not None:
        bar.update(1)


def _grid_bar(total: int, progress: bool):
    if not progress or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="jobs", unit="job", file=sys.stderr, dynamic_ncols=True)


def _write_line(bar, text: str) -> None:
    if bar is not None:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _short_metrics(records: list[dict[str, Any]]) -> str:
    parts = []
    for record in records:
        m = record.get("metrics", {})
        vals = [f"{k}={m[k]:.3f}" for k in ("image_auroc", "pixel_auroc") if m.get(k) is not None]
        prefix = f" [{record['category']}]" if len(records) > 1 else ""
        parts.append(prefix + " " + " ".join(vals) + f" ({record.get('fit_seconds')} s fit)")
    return "".join(parts)


__all__ = ["RunOptions", "Plan", "RunSummary", "plan_run", "run", "resolve_configs", "validate_categories"]
