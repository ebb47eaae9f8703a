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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from adbench.config import SET_SOURCE, load_yaml_config, merge_overrides, parse_set_options, resolve_config, yaml_source
from adbench.errors import ConfigError, DataError
from adbench.files import safe_name
from adbench.jobs import Job
from adbench.options import (RUN_OPTIONS, TEXTURES_ENV, check_checkpoint_dir, check_workdir, checked_values, job_values,
                             options_class, parse_list)
from adbench.results.store import Store


#: the options of one run, one field per declaration of ``adbench.options.RUN_OPTIONS``
RunOptions = options_class(RUN_OPTIONS, "RunOptions", __name__)


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
# Planning and validation: check, build the grid, place
# --------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """What the checked options select: methods with their resolved configs, categories."""

    options: dict[str, Any]  # every option's checked value (adbench.options)
    methods: list[str]
    configs: dict[str, Any]
    categories: list[str]
    kinds: dict[str, str]  # category -> texture / object
    fp32_only: list[str]  # methods that do not honour the requested --precision
    notes: list[str]


def plan_run(opts: RunOptions) -> Plan:
    """Check everything a user can get wrong, build the job grid, and place it: which jobs are
    left to do in the results folder, where their checkpoints go."""
    grid = check_run(opts)
    store = Store(opts.results)
    store.check_writable()
    ckpt_root = Path(opts.checkpoint_dir).expanduser().resolve() if opts.checkpoint_dir else store.root / ".checkpoints"
    if grid.options["checkpoint_every"] > 0:
        check_checkpoint_dir(ckpt_root, "--checkpoint-dir" if opts.checkpoint_dir else "checkpoint folder")
    jobs = build_jobs(grid, ckpt_root)
    if opts.rerun:
        todo, done = list(jobs), []
    else:
        todo = [j for j in jobs if not store.is_done(j)]
        done = [j for j in jobs if j not in todo]
    return Plan(jobs=jobs, todo=todo, skipped_done=done, notes=grid.notes, store=store)


def check_run(opts: RunOptions) -> Grid:
    """Every option's own check, then the names, configs, weights and data they select (one
    exit-2 error for the first kind of problem, listing all its instances)."""
    from adbench.registry import DATASETS, METHODS, load_plugins

    load_plugins(list(opts.plugins))
    METHODS.load()
    DATASETS.load()
    from adbench.results.claims import lease_seconds_from_env

    values = checked_values(opts)
    check_device(opts.device, opts.executor)
    check_executor_options(opts)
    lease_seconds_from_env()  # $ADBENCH_CLAIM_LEASE_SECONDS, with the options
    notes: list[str] = []
    methods = select_methods(opts, notes)
    dataset_cls = DATASETS.get(opts.dataset)
    configs = resolve_configs(methods, opts, notes)
    check_memory(configs)
    values["workers"] = cap_workers(values["workers"], opts, notes)
    notes.extend(check_pretrained_weights(configs, opts.profile, values["weights"]))
    values["textures"] = check_textures(configs, opts.profile, values["textures"], notes)
    adapter = dataset_cls(opts.data_root)
    categories = adapter.select(parse_list(opts.category))
    validate_categories(adapter, categories, values.get("shots"))
    methods = check_protocols(methods, configs, categories, opts, notes)
    fp32_only = [m for m in methods if values["precision"] not in METHODS.get(m).precisions]
    if fp32_only:
        notes.append(f"--precision {values['precision']} does not apply to {', '.join(fp32_only)} (no networks "
                     f"under autocast): fp32 there, and their records say so")
    kinds = {c: adapter.category_info(c).kind for c in categories}
    return Grid(values, methods, configs, categories, kinds, fp32_only, notes)


def check_protocols(methods: list[str], configs: dict[str, Any], categories: list[str], opts: RunOptions,
                    notes: list[str]) -> list[str]:
    """A recipe that prescribes a protocol (UniAD's ``miad`` trains unified) against the run's
    ``--protocol``: with ``--method all`` such a method is skipped with a note, a method named
    explicitly stops the run (``Detector.check_protocol``'s one line)."""
    from adbench.registry import METHODS

    kept = []
    for method in methods:
        try:
            METHODS.get(method).check_protocol(
                configs[method], categories if opts.protocol == "unified" else categories[:1], opts.profile)
        except ConfigError as exc:
            if (opts.method or "all").strip() != "all":
                raise
            notes.append(f"skipping {method}: {exc}")
            continue
        kept.append(method)
    if not kept:
        raise ConfigError(notes[-1].split(": ", 1)[1])
    return kept


#: options that only the Ray executor reads (the no-silent-options rule: an error elsewhere)
RAY_ONLY = ("cpus_per_job", "gpus_per_job", "memory_per_job")


def check_executor_options(opts: RunOptions) -> None:
    """``--cpus-per-job``, ``--gpus-per-job``, ``--memory-per-job`` size Ray tasks; the local
    executor divides the machine itself (``--jobs``), so there they would be ignored."""
    given = [name for name in RAY_ONLY if getattr(opts, name) is not None]
    if given and opts.executor != "ray":
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"{flags}: only --executor ray reads {'it' if len(given) == 1 else 'them'} (the local "
                          f"executor divides this machine's cores with --jobs)")


def cap_workers(workers: Optional[int], opts: RunOptions, notes: list[str]) -> Optional[int]:
    """``--workers`` above the CPUs a job gets (its share of this machine, or its Ray request)
    only adds processes that wait for a core: capped there, with a note."""
    from adbench.run.executors import local_resources

    if workers is None:
        return None
    if opts.executor == "ray":
        cpus = int(opts.cpus_per_job) if opts.cpus_per_job else None  # the default fits the node
    else:
        threads = local_resources(opts)[2]
        cpus = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if cpus is not None and workers > max(1, cpus):
        notes.append(f"--workers {workers}: capped at {max(1, cpus)}, the CPUs each job has")
        return max(1, cpus)
    return workers


def check_memory(configs: dict[str, Any]) -> None:
    """A lower bound of a job's memory against what this machine has: one batch of input images
    as float32 (``batch_size`` or ``eval_batch_size`` images of 3 x ``image_size``^2). Networks
    need several times that, so a configuration that fails this cannot run at all; one that
    passes may still need more than the machine has (what is checked is said in the message)."""
    from adbench.data.input_settings import available_memory_bytes
    from adbench.files import size_text

    available = available_memory_bytes()
    for method, config in configs.items():
        size = getattr(config, "image_size", None)
        if not isinstance(size, int) or size <= 0:
            continue
        batch = max(int(getattr(config, "batch_size", 1) or 1), int(getattr(config, "eval_batch_size", 0) or 0))
        needed = batch * 3 * size * size * 4
        if needed > available:
            raise ConfigError(f"--set image_size={size}, batch_size={batch}: {method}'s input batch alone ({batch} "
                              f"images of 3 x {size} "
                              f"x {size}, float32) needs {size_text(needed)}, this machine has {size_text(available)} "
                              f"available")


def select_methods(opts: RunOptions, notes: list[str]) -> list[str]:
    """``--method`` resolved, narrowed to the methods that have ``--profile`` (for ``all``) and
    the ``unified`` protocol (when asked for), with a note for each one left out."""
    from adbench.registry import METHODS

    spec = "all" if opts.method is None else opts.method
    methods = list(dict.fromkeys(METHODS.resolve_list(spec)))
    if not methods:
        raise ConfigError("--method: no methods registered")
    if spec.strip() == "all":
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
    return methods


def build_jobs(grid: Grid, ckpt_root: Path) -> list[Job]:
    """One job per (method, shots, seed, category) (``single``) or per (method, shots, seed)
    (``unified``), each carrying the in-job options; duplicates (``--method a,a``) once."""
    carried = job_values(grid.options)
    jobs: list[Job] = []
    for method in grid.methods:
        config = grid.configs[method]
        groups = [[c] for c in grid.categories] if carried["protocol"] == "single" else [list(grid.categories)]
        for shots in grid.options["shots"] or [None]:
            for seed in grid.options["seed"]:
                for cats in groups:
                    job = Job(**{**carried, "precision": "fp32" if method in grid.fp32_only else carried["precision"]},
                              method=method, categories=cats, seed=seed, shots=shots, config=_plain(config.to_dict()),
                              config_hash=config.config_hash(), category_kinds={c: grid.kinds[c] for c in cats})
                    if job.checkpoint_every > 0:
                        job = dataclasses.replace(job, checkpoint_path=str(checkpoint_path(ckpt_root, job)))
                    jobs.append(job)
    return list({job.key(): job for job in jobs}.values())


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
    stem = Path(job.record_name(job.categories[0])).stem
    return Path(root) / safe_name(job.dataset) / safe_name(job.method) / f"{stem}.ckpt"


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


def check_textures(configs: dict[str, Any], profile: str, textures: Optional[str], notes: list[str]) -> Optional[str]:
    """The anomaly texture set of every configuration that pastes one (``Detector.texture_source``
    is ``"dtd"``), before any job. ``--textures DIR`` (else ``$ADBENCH_TEXTURES_DIR``) is checked
    (``adbench.detector.check_texture_set``: DTD layout, every image decodes) and bound into each
    such configuration (``Detector.with_textures``: its fingerprint and image count join the
    config hash, its folder does not). Without a set a ``quick*`` profile draws procedural
    textures (a note); any other profile stops with one line naming the methods and the profile.
    ``anomaly_source=procedural`` is a note; ``--textures`` that nothing reads is an error (no
    silent options). Returns the folder the jobs carry (None when no job uses one)."""
    from adbench.detector import check_texture_set, profile_allows_procedural_textures
    from adbench.registry import METHODS

    wants = _texture_sources(configs)
    users = [m for m, source in wants.items() if source == "dtd"]
    chosen = [m for m, source in wants.items() if source == "procedural"]
    if chosen:
        notes.append(f"{', '.join(chosen)}: anomaly_source=procedural: procedural anomaly textures, not the DTD "
                     f"images the paper pastes (numbers not comparable with the paper's)")
    if not users:
        if textures:
            raise ConfigError(f"--textures {textures} has no effect: no selected method pastes texture images in "
                              f"this configuration ({', '.join(configs)})")
        return None
    folder = textures or os.environ.get(TEXTURES_ENV) or None
    one = len(users) == 1
    who = f"{', '.join(users)} (profile {profile})"
    if folder is None:
        if profile_allows_procedural_textures(profile):
            notes.append(f"{who}: no --textures, so procedural anomaly textures (the paper pastes DTD images; "
                         f"--textures DIR gives them)")
            return None
        raise ConfigError(f"{who} {'pastes' if one else 'paste'} DTD texture images into {'its' if one else 'their'} "
                          f"synthetic anomalies: give a DTD copy (images/<class>/*.jpg) with --textures DIR or "
                          f"${TEXTURES_ENV}, or --set anomaly_source=procedural for procedural textures (not the "
                          f"paper's recipe)")
    try:
        texture_set = check_texture_set(folder)
    except DataError as exc:
        given = f"--textures {folder}" if textures else f"${TEXTURES_ENV}={folder}"
        raise DataError(f"{given}: {exc.problems[0]} ({who} {'pastes' if one else 'paste'} images from it)") from None
    for method in users:
        configs[method] = METHODS.get(method).with_textures(configs[method], texture_set)
    return str(texture_set.folder)


def _texture_sources(configs: dict[str, Any]) -> dict[str, Optional[str]]:
    """``Detector.texture_source`` of every configuration; a refusal names its method."""
    from adbench.registry import METHODS

    out = {}
    for method, config in configs.items():
        try:
            out[method] = METHODS.get(method).texture_source(config)
        except ConfigError as exc:
            raise ConfigError(f"{method}: {exc.problems[0]}") from None
    return out


def validate_categories(adapter, categories: list[str], shots: Optional[list[int]] = None) -> None:
    """Index and validate every selected category (and that each has the largest ``--shots``
    training images); one DataError listing every problem."""
    from adbench.dataset import validate_index

    problems: list[str] = []
    for category in categories:
        try:
            index = adapter.index(category)
            validate_index(index, category=category)
        except DataError as exc:
            problems.extend(exc.problems)
            continue
        if shots and max(shots) > len(index.train):
            problems.append(f"--shots {max(shots)}: {category} has only {len(index.train)} training image(s)")
    if problems:
        head = problems[0] if len(problems) == 1 else f"{len(problems)} data problems"
        raise DataError(head, problems=problems)


def check_device(device: str, executor: str = "local") -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked without initialising CUDA here
    (``adbench.run.gpus``). Under Ray the GPUs are the cluster's, not this machine's."""
    if device in ("auto", "cpu"):
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if executor == "ray":
            return
        from adbench.run.gpus import visible_gpus

        gpus = visible_gpus()
        if not gpus:
            raise ConfigError(f"--device {device}: no CUDA GPU is visible on this machine")
        if ":" in device and int(device[5:]) >= len(gpus):
            raise ConfigError(f"--device {device}: no such GPU here ({len(gpus)} visible: cuda:0"
                              f"{f' to cuda:{len(gpus) - 1}' if len(gpus) > 1 else ''})")
        return
    raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


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
    from adbench.run.executors import make_executor

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    plan = plan_run(opts)
    executor = make_executor(opts) if plan.todo else None  # no Ray start when nothing is left
    tidy_results_folder(plan, opts, log)
    summary = RunSummary(plan=plan, records=[])
    dispatch = Dispatch(plan, summary, opts)
    try:
        if executor is not None:
            executor.run(plan.todo, dispatch.on_done, start=dispatch.start)
    finally:
        dispatch.close()
    for job in plan.jobs:
        for path in plan.store.record_paths(job):
            record = plan.store.read(path)
            if record is not None:
                summary.records.append(record)
    summary.seconds = time.perf_counter() - t0
    return summary


def tidy_results_folder(plan: Plan, opts: RunOptions, log) -> None:
    """Before the first job: the plan's notes, then leftovers of killed runs removed (temporary
    record files, job work folders), and what is already done."""
    from adbench.run.workdirs import remove_orphaned_workdirs

    for note in plan.notes:
        log(f"note: {note}")
    removed = plan.store.clean_stale_tmp()
    if removed:
        log(f"note: removed {removed} temporary file(s) left by an interrupted run")
    orphans = remove_orphaned_workdirs(check_workdir(opts.workdir))
    if orphans:
        log(f"note: removed {orphans} work folder(s) left by killed jobs")
    if plan.skipped_done:
        log(f"{len(plan.skipped_done)} of {len(plan.jobs)} job(s) already done in {plan.store.root} "
            f"(skipped; --rerun forces them)")


class Dispatch:
    """The executor's two callbacks: ``start`` claims a job right before it runs (or skips it),
    ``on_done`` stores its records at once, releases its claim, and reports it."""

    def __init__(self, plan: Plan, summary: RunSummary, opts: RunOptions):
        from adbench.results.claims import ClaimBook
        from adbench.run.result_writer import ResultWriter

        self.plan, self.summary, self.rerun, self.progress = plan, summary, opts.rerun, opts.progress
        self._bar, self._bar_wanted = None, (len(plan.todo), opts.progress)
        self.writer = ResultWriter(plan.store, keep_checkpoints=opts.keep_checkpoints)
        self.claims = ClaimBook(plan.store.root)
        self.claim_of: dict[tuple, Path] = {}
        self.started = time.time()  # records written after this were written by a concurrent run

    @property
    def bar(self):
        """The grid's progress bar, drawn when the first job starts (an executor that refuses
        the grid up front, e.g. Ray without a node that fits, leaves only its error line)."""
        if self._bar is None:
            self._bar = _grid_bar(*self._bar_wanted)
        return self._bar

    def start(self, job: Job) -> bool:
        """Claim the job right before it runs; skip it when a live run holds it, or when another
        run finished it since this run was planned."""
        path = self.claims.path_for(job.dataset, job.method, Path(job.record_name(job.categories[0])).stem)
        holder = self.claims.acquire(path, job.label)
        if holder is not None:
            self.summary.n_elsewhere += 1
            self._skip(f"{job.label}: running elsewhere ({holder.describe()}); skipped")
            return False
        if self.plan.store.is_done(job):
            if not self.rerun or self._written_since_start(job):
                self.claims.release(path)
                self.summary.n_done_meanwhile += 1
                self._skip(f"{job.label}: finished by another run meanwhile; skipped")
                return False
            self._forget_kept_model(job)
        self.claim_of[job.key()] = path
        return True

    def _written_since_start(self, job: Job) -> bool:
        """Under ``--rerun``: every record of the job was written after this run started, i.e.
        by a concurrent ``--rerun`` run (so each job is recomputed once, not once per run)."""
        paths = self.plan.store.record_paths(job)
        try:
            return bool(paths) and all(p.stat().st_mtime >= self.started for p in paths)
        except OSError:
            return False

    def _forget_kept_model(self, job: Job) -> None:
        """``--rerun`` retrains a finished job: the final checkpoint ``--keep-checkpoints`` kept
        (the trained model) is removed so the job does not merely score it again; a
        mid-training checkpoint (an interrupted rerun) is still resumed."""
        from adbench.training.checkpoints import read_header, remove

        if job.checkpoint_path:
            header = read_header(Path(job.checkpoint_path))
            if header is not None and header.final:
                remove(Path(job.checkpoint_path))

    def on_done(self, job: Job, records: list[dict[str, Any]]) -> None:
        try:
            notes = self.writer.accept(job, records)
        finally:
            path = self.claim_of.pop(job.key(), None)
            if path is not None:
                self.claims.release(path)
        failed = [r for r in records if r.get("status") != "ok"]
        line = f"{job.label}: " + ("failed: " + str(failed[0].get("error")) if failed else "ok")
        if failed:
            self.summary.n_failed += 1
            _write_line(self.bar, "FAILED " + line)
        else:
            self.summary.n_ok += 1
            if self.progress:
                _write_line(self.bar, line + _short_metrics(records))
        for note in notes:
            _write_line(self.bar, f"note: {note}")
        _advance(self.bar)

    def _skip(self, line: str) -> None:
        _write_line(self.bar, line)
        _advance(self.bar)

    def close(self) -> None:
        self.claims.release_all()
        if self._bar is not None:
            self._bar.close()


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


__all__ = ["RunOptions", "Plan", "RunSummary", "plan_run", "check_run", "build_jobs", "run", "resolve_configs",
           "validate_categories"]
