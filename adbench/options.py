"""Every ``adbench run`` option, declared once: name, flags, type, default, help text, check.

Three things are derived from ``RUN_OPTIONS`` and nothing else:

* the command line (``adbench.cli.run_cmd`` gets one click option per declaration);
* ``adbench.run.runner.RunOptions``, the dataclass a program (or a test) fills instead of a
  command line (``options_class``);
* the fields of ``adbench.jobs.Job`` that a job carries as given (``in_job=True``), e.g.
  ``--precision`` or ``--workers``: the runner copies the checked values into every job it
  builds.

So adding an option is one declaration here plus the code that uses it. A declaration's
``check`` looks at its own value only (a range, a file that must exist) and returns the value
the run uses (an absolute path, a parsed list); checks that relate two options (``--device``
against ``--executor``) are named steps of ``adbench.run.runner``'s planning.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from adbench.errors import ConfigError, WeightsError
from adbench.files import writable_folder

#: seconds between checkpoints inside a job (``--checkpoint-every``); also the default of a
#: ``Checkpointing`` made outside the harness
DEFAULT_CHECKPOINT_EVERY = 600.0
PROTOCOLS = ("single", "unified")
PRECISIONS = ("fp32", "tf32", "bf16")
EXECUTORS = ("local", "ray")
#: seeds feed numpy's legacy global generator (``np.random.seed``), whose seeds are 32-bit
MAX_SEED = 2**32 - 1
#: where a run finds its anomaly texture set when ``--textures`` is not given
TEXTURES_ENV = "ADBENCH_TEXTURES_DIR"


@dataclass(frozen=True)
class Option:
    """One ``adbench run`` option.

    name:    the field name in ``RunOptions`` (and ``Job`` when ``in_job``).
    flags:   its command-line spellings, long first (``("--jobs", "-j")``).
    type:    str, int, float, bool (a flag), or a tuple of allowed strings (a choice).
    default: the value when the option is not given (a list for ``multiple`` options).
    help:    the ``--help`` text.
    check:   value -> the value the run uses; raises ConfigError with one line naming the flag.
    in_job:  every job of the run carries the checked value as a field of the same name.
    multiple: repeatable (``--set a=1 --set b=2``), a list.
    flag_value: for a flag that stores something other than True (``--quiet`` stores
             ``progress=False``).
    path:    ``file`` or ``dir`` for a path option that must not name the other kind.
    """

    name: str
    flags: tuple[str, ...]
    type: Any = str
    default: Any = None
    help: str = ""
    metavar: Optional[str] = None
    check: Optional[Callable[[Any], Any]] = None
    in_job: bool = False
    multiple: bool = False
    flag_value: Any = None
    show_default: bool = False
    path: Optional[str] = None

    @property
    def flag(self) -> str:
        return self.flags[0]

    def checked(self, value: Any) -> Any:
        return value if self.check is None else self.check(value)


# --------------------------------------------------------------------------------------------
# value checks (each names its flag in the one-line error)
# --------------------------------------------------------------------------------------------
def check_seed(seed: int, spec=None) -> int:
    """A seed in 0 .. 2**32 - 1, else a ConfigError naming --seed (checked before any job)."""
    if not 0 <= seed <= MAX_SEED:
        single = not isinstance(spec, str) or "," not in spec
        head = f"--seed {seed}" if single else f"--seed {spec!r}: {seed}"
        raise ConfigError(f"{head}: out of range (a seed is 0 .. {MAX_SEED}, i.e. below 2**32)")
    return seed


def parse_seeds(spec: str | int | None) -> list[int]:
    """``--seed 0`` or ``--seed 0,1,2`` -> [ints]; a bad value is a ConfigError."""
    if spec is None or spec == "":
        return [0]
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [check_seed(spec, spec)]
    seeds = []
    for item in str(spec).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            seeds.append(int(item))
        except ValueError:
            raise ConfigError(f"--seed {spec!r}: expected an integer or a comma list of integers") from None
    for seed in seeds:
        check_seed(seed, spec)
    if not seeds:
        raise ConfigError(f"--seed {spec!r}: no seed given")
    return list(dict.fromkeys(seeds))


def parse_shots(spec: str | int | None) -> Optional[list[int]]:
    """``--shots 1,2,4,8`` -> [1, 2, 4, 8]; None or '' -> None (every training image)."""
    if spec is None or spec == "":
        return None
    shots = []
    for item in str(spec).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(f"--shots {spec!r}: expected a positive integer or a comma list of them") from None
        if value < 1:
            raise ConfigError(f"--shots {spec!r}: {value} is not a positive number of training images")
        shots.append(value)
    if not shots:
        raise ConfigError(f"--shots {spec!r}: no shot count given")
    return sorted(dict.fromkeys(shots))


def parse_list(spec: Optional[str]) -> Optional[list[str]]:
    """``a,b`` -> [a, b]; None / '' / 'all' -> None (meaning: all)."""
    if spec is None:
        return None
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items or items == ["all"]:
        return None
    return list(dict.fromkeys(items))


def one_of(flag: str, allowed: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ConfigError(f"{flag} {value!r}: expected {' or '.join(allowed)}")
        return value

    return check


def number(flag: str, low: float, *, strict: bool = False, finite: bool = True, why: str = "") -> Callable[[Any], Any]:
    """None passes (the option's automatic default); else a number >= low (> low if strict),
    never NaN, and finite unless ``finite=False`` allows infinity. NaN fails every comparison,
    so it would otherwise slip through ``value < low`` checks and turn a feature off silently."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        if math.isnan(value) or (finite and math.isinf(value)):
            raise ConfigError(f"{flag} {value}: must be a finite number{why}")
        ok = value > low if strict else value >= low
        if not ok:
            raise ConfigError(f"{flag} {value}: must be {'>' if strict else '>='} {low:g}{why}")
        return value

    return check


def check_weights(weights: Optional[str]) -> Optional[str]:
    """``--weights``: None (default resolution), ``random``, or an existing file (made absolute,
    so job processes and Ray workers find it whatever their working folder)."""
    if weights in (None, "", "random"):
        return weights or None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"--weights {weights}: file not found (give a weights file or 'random')")
    return str(path.resolve())


#: free space a run needs in --workdir and the checkpoint folder before it starts, as for the
#: results folder (``adbench.results.store.MIN_FREE_BYTES``): a quick job's spill files or
#: checkpoint are a few MiB, and larger ones check their real size when they are written
#: (checkpoints warn and go on without; a spilled cache reserves its blocks or says "disk full")
MIN_FREE_WORK_BYTES = 16 * 2**20


def check_workdir(workdir: Optional[str]) -> Optional[str]:
    """``--workdir``: created if missing; it must take a file and have some free space (one
    exit-2 line otherwise, before any job), since every job's spill files and caches go there."""
    if not workdir:
        return None
    path, problem = writable_folder(workdir, MIN_FREE_WORK_BYTES)
    if problem:
        raise ConfigError(f"--workdir {workdir}: {problem}")
    return str(path)


def check_checkpoint_dir(folder: Path | str, flag: str = "--checkpoint-dir") -> str:
    """Where the run's checkpoints go (``--checkpoint-dir``, or ``<results>/.checkpoints``):
    checked like ``--workdir`` before any job, so cleaning up after the first finished job
    cannot fail on a path below a file or a read-only folder."""
    path, problem = writable_folder(folder, MIN_FREE_WORK_BYTES)
    if problem:
        raise ConfigError(f"{flag} {folder}: {problem}")
    return str(path)


def absolute_path(value: Optional[str]) -> Optional[str]:
    return str(Path(value).expanduser().resolve()) if value else None


def check_checkpoint_every(value: float) -> float:
    if math.isnan(value) or not value >= 0:
        raise ConfigError(f"--checkpoint-every {value}: must be >= 0 seconds (0 turns checkpoints off, inf keeps "
                          f"only the final one)")
    return float(value)


def check_workers(value: Optional[int]) -> Optional[int]:
    if value is not None and int(value) < 0:
        raise ConfigError(f"--workers {value}: must be 0 (load in the job's own process) or more")
    return value


def check_cache_gb(value: Optional[float]) -> Optional[float]:
    if value is not None and (math.isnan(value) or math.isinf(value) or not value >= 0):
        raise ConfigError(f"--cache-gb {value}: must be 0 (always spill to --workdir) or more, and finite")
    return value


def check_precision(value: str) -> str:
    from adbench.precision import check  # (core: adbench.precision imports only errors)

    return check(value)


# --------------------------------------------------------------------------------------------
# the declarations
# --------------------------------------------------------------------------------------------
RUN_OPTIONS: tuple[Option, ...] = (
    Option("method", ("--method", "-m"), default="all", show_default=True,
           help="Method name, comma list, or 'all'."),
    Option("dataset", ("--dataset", "-d"), default="synthetic", show_default=True, in_job=True,
           help="Dataset adapter name."),
    Option("data_root", ("--data-root",), check=absolute_path, in_job=True,
           help="Dataset folder (not needed for synthetic)."),
    Option("category", ("--category", "-c"), help="Category name or comma list (default: all found)."),
    Option("profile", ("--profile",), default="paper", show_default=True, in_job=True,
           help="Config profile: paper or quick."),
    Option("set_options", ("--set",), multiple=True, default=(), metavar="KEY=VALUE",
           help="Config override (repeatable)."),
    Option("config_file", ("--config",), path="file",
           help="YAML overrides: flat keys, and/or methods: {name: {...}}."),
    Option("seed", ("--seed",), default="0", show_default=True, check=parse_seeds,
           help="Seed or comma list (one job per seed)."),
    Option("shots", ("--shots",), check=parse_shots, metavar="K[,K...]",
           help="Few-shot: train each job on K normal images drawn by its seed, nested (the 1-shot image is "
                "among the 2-shot ones); a comma list gives one job per K [default: every training image]."),
    Option("protocol", ("--protocol",), type=PROTOCOLS, default="single", show_default=True, in_job=True,
           check=one_of("--protocol", PROTOCOLS), help="single: one model per category; unified: one "
           "model over all selected categories."),
    Option("results", ("--results",), default="results", show_default=True, help="Results folder (records)."),
    Option("weights", ("--weights",), check=check_weights, in_job=True,
           help="Backbone weights: a file, or 'random' (tests)."),
    Option("textures", ("--textures",), path="dir", check=absolute_path, in_job=True, metavar="DIR",
           help=f"Anomaly texture set: a DTD copy (images/<class>/*.jpg) [default: ${TEXTURES_ENV}]. DRAEM's "
                f"paper/miad and ToCoAD's paper/convnext profiles paste its images into their synthetic "
                f"anomalies and need it; it is checked before any job, and jobs are keyed by its content "
                f"(sha256 of names and sizes), not its folder. quick profiles without it draw procedural "
                f"textures."),
    Option("device", ("--device",), default="auto", show_default=True, in_job=True,
           help="auto, cpu, cuda (every visible GPU) or cuda:N."),
    Option("plugins", ("--plugin",), multiple=True, default=(), metavar="MODULE", in_job=True,
           help="Import a module that registers more."),
    Option("rerun", ("--rerun",), type=bool, default=False, help="Run jobs again even when their records exist."),
    Option("executor", ("--executor",), type=EXECUTORS, default="local", show_default=True,
           check=one_of("--executor", EXECUTORS), help="local: this machine; ray: a Ray cluster."),
    Option("metric", ("--metric",), default="image_auroc,pixel_auroc", show_default=True,
           help="Metrics of the final table."),
    Option("save_predictions", ("--save-predictions",), type=bool, default=False, in_job=True,
           help="Keep image scores, float16 maps and sample paths beside each record (<record>.npz)."),
    Option("jobs", ("--jobs", "-j"), type=int, check=number("--jobs", 1),
           help="Jobs at once on this machine [default: one per visible GPU, 1 on a CPU]; the cores are "
                "divided between them."),
    Option("job_timeout", ("--job-timeout",), type=float, metavar="SECONDS", check=number("--job-timeout", 0, strict=True, why=" seconds"),
           help="A job running longer is stopped and recorded as failed (its checkpoint is kept)."),
    Option("cpus_per_job", ("--cpus-per-job",), type=float, check=number("--cpus-per-job", 0, strict=True), help="Ray: CPUs per job, also its threads [default: 4]."),
    Option("gpus_per_job", ("--gpus-per-job",), type=float, check=number("--gpus-per-job", 0),
           help="Ray: GPUs per job [default: 1 when the cluster has GPUs]."),
    Option("memory_per_job", ("--memory-per-job",), type=float, metavar="GIB",
           check=number("--memory-per-job", 0, strict=True), help="Ray: memory each job reserves."),
    Option("checkpoint_every", ("--checkpoint-every",), type=float, default=DEFAULT_CHECKPOINT_EVERY,
           show_default=True, metavar="SECONDS", check=check_checkpoint_every, in_job=True,
           help="Save each training job's complete state this often (and when training ends); a rerun "
                "resumes from it. 0 turns checkpoints off; inf keeps only the final one."),
    Option("checkpoint_dir", ("--checkpoint-dir",), path="dir",
           help="Where checkpoints go [default: <results>/.checkpoints]; Ray workers must be able to write it."),
    Option("precision", ("--precision",), type=PRECISIONS, default="fp32", show_default=True,
           check=check_precision, in_job=True,
           help="Numeric precision of the networks (fp32: what the papers ran; bf16: autocast; tf32: TF32 "
                "tensor cores on GPUs). Part of each job's identity."),
    Option("workdir", ("--workdir",), path="dir", check=check_workdir, in_job=True,
           help="Where jobs keep work files (spill files, caches) [default: the system temp folder; GPU "
                "nodes often have a small /tmp]."),
    Option("workers", ("--workers",), type=int, check=check_workers, in_job=True,
           help="DataLoader worker processes per job [default: on a GPU the job's CPUs minus one, at most 8; "
                "on a CPU none]; results do not depend on it."),
    Option("cache_gb", ("--cache-gb",), type=float, metavar="GIB", check=check_cache_gb, in_job=True,
           help="RAM per job for decoded training images and cached features; what does not fit is "
                "memory-mapped under --workdir [default: a quarter of the available memory, divided "
                "between the jobs that run at once]."),
    Option("keep_checkpoints", ("--keep-checkpoints",), type=bool, default=False,
           help="Keep each job's final checkpoint (the trained model) after its record is written."),
    Option("progress", ("--quiet", "-q"), type=bool, default=True, flag_value=False, in_job=True,
           help="No progress bars."),
)


def field_type(option: Option) -> Any:
    if option.multiple:
        return list
    if option.type is bool:
        return bool
    return Optional[option.type] if option.default is None and option.type in (int, float, str) else Any


def dataclass_field(option: Option) -> tuple[str, Any, Any]:
    """(name, type, field) of a dataclass field holding this option's value."""
    if option.multiple:
        return option.name, list, dataclasses.field(default_factory=lambda d=option.default: list(d))
    return option.name, field_type(option), dataclasses.field(default=option.default)


def options_class(options: Sequence[Option] = RUN_OPTIONS, name: str = "RunOptions", module: str = __name__) -> type:
    """A dataclass with one field per option, defaults as declared (``RunOptions``)."""
    cls = dataclasses.make_dataclass(name, [dataclass_field(o) for o in options])
    cls.__module__ = module
    cls.__doc__ = "The options of one ``adbench run`` (adbench.options.RUN_OPTIONS), as given."
    return cls


def checked_values(opts: Any, options: Sequence[Option] = RUN_OPTIONS) -> dict[str, Any]:
    """Every option's checked value (``Option.check``), by name; the first bad one raises."""
    values = {}
    for option in options:
        value = getattr(opts, option.name)
        values[option.name] = option.checked(list(value) if option.multiple else value)
    return values


def job_values(checked: dict[str, Any], options: Sequence[Option] = RUN_OPTIONS) -> dict[str, Any]:
    """The checked values every job of the run carries (``in_job`` options)."""
    return {o.name: checked[o.name] for o in options if o.in_job}
