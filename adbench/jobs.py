"""Jobs: the unit of work of a run, and how a command line expands into a grid of them.

A job is (method, dataset, categories, seed, protocol, config hash, weights). Under the
``single`` protocol it trains on one category and writes one record; under ``unified`` it
trains one model on the union of the training sets of all selected categories and writes one
record per category, so its key holds the *set* of categories.

A ``Job`` is plain data (strings, numbers, a config dict): it crosses process boundaries
(multiprocessing spawn, Ray) by pickling without dragging detector classes along, and the
child rebuilds everything from it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

PROTOCOLS = ("single", "unified")


@dataclass
class Job:
    method: str
    dataset: str
    data_root: Optional[str]
    categories: list[str]  # one for `single`; the training set for `unified`
    seed: int
    protocol: str
    profile: str
    config: dict[str, Any]  # resolved config (dataclass values)
    config_hash: str
    weights: Optional[str] = None
    precision: str = "fp32"  # part of the job's identity (adbench.precision); fp32 adds no tag
    device: str = "auto"
    progress: bool = True
    plugins: list[str] = field(default_factory=list)
    category_kinds: dict[str, str] = field(default_factory=dict)
    save_predictions: bool = False  # keep test outputs (adbench.predictions); not part of key()
    # checkpoints inside the job (adbench.training); none of these is part of key()
    checkpoint_path: Optional[str] = None  # None: no checkpoints
    checkpoint_every: float = 600.0  # seconds between checkpoints (0: none)
    # where the job runs (set by the executor; not part of key()): CPU threads, physical GPU index
    threads: Optional[int] = None
    gpu: Optional[int] = None
    workdir: Optional[str] = None  # parent of the job's work folder (--workdir); None: system temp
    # the input pipeline (adbench.inputs; not part of key(): they never change a result)
    workers: Optional[int] = None  # DataLoader workers (--workers); None: from the job's CPUs
    cache_bytes: Optional[int] = None  # RAM for decoded images and features (--cache-gb); None: auto

    # --- identity ------------------------------------------------------------------------
    @property
    def protocol_tag(self) -> str:
        """``single``, or ``unified-<n>c-<hash>`` naming the set of training categories."""
        if self.protocol == "single":
            return "single"
        return f"unified-{len(self.categories)}c-{categories_hash(self.categories)}"

    @property
    def weights_tag(self) -> str:
        """How ``--weights`` was given: '' (default resolution), 'random', or a path hash."""
        if self.weights in (None, ""):
            return ""
        if self.weights == "random":
            return "random"
        return "w" + hashlib.sha256(str(self.weights).encode()).hexdigest()[:8]

    @property
    def precision_tag(self) -> str:
        """'' for fp32 (what every job ran before ``--precision`` existed), else the precision."""
        return "" if self.precision == "fp32" else self.precision

    def key(self) -> tuple:
        return (
            self.method,
            self.dataset,
            tuple(sorted(self.categories)) if self.protocol == "unified" else self.categories[0],
            self.seed,
            self.protocol,
            self.config_hash,
            self.weights_tag,
            self.precision_tag,
        )

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been written for to be resumed by this job."""
        return {"method": self.method, "dataset": self.dataset, "categories": sorted(self.categories),
                "seed": self.seed, "protocol": self.protocol, "config_hash": self.config_hash,
                "weights": self.weights_tag, "precision": self.precision}

    def record_name(self, category: str) -> str:
        """File name of the record of ``category`` (unique per job key and category)."""
        parts = [category, self.protocol_tag, f"s{self.seed}", self.config_hash]
        if self.weights_tag:
            parts.append(self.weights_tag)
        if self.precision_tag:
            parts.append(self.precision_tag)
        return "__".join(parts) + ".json"

    @property
    def label(self) -> str:
        cats = self.categories[0] if self.protocol == "single" else f"unified[{','.join(self.categories)}]"
        return f"{self.method}/{self.dataset}/{cats}/s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def categories_hash(categories: list[str]) -> str:
    blob = json.dumps(sorted(categories))
    return hashlib.sha256(blob.encode()).hexdigest()[:6]


def parse_seeds(spec: str | int | None) -> list[int]:
    """``--seed 0`` or ``--seed 0,1,2`` -> [ints]; a bad value is a ConfigError."""
    from adbench.errors import ConfigError

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


#: seeds feed numpy's legacy global generator (``np.random.seed``), whose seeds are 32-bit
MAX_SEED = 2**32 - 1


def check_seed(seed: int, spec=None) -> int:
    """A seed in 0 .. 2**32 - 1, else a ConfigError naming --seed (checked before any job)."""
    from adbench.errors import ConfigError

    if not 0 <= seed <= MAX_SEED:
        single = not isinstance(spec, str) or "," not in spec
        head = f"--seed {seed}" if single else f"--seed {spec!r}: {seed}"
        raise ConfigError(f"{head}: out of range (a seed is 0 .. {MAX_SEED}, i.e. below 2**32)")
    return seed


def parse_list(spec: Optional[str]) -> Optional[list[str]]:
    """``a,b`` -> [a, b]; None / '' / 'all' -> None (meaning: all)."""
    if spec is None:
        return None
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items or items == ["all"]:
        return None
    return list(dict.fromkeys(items))
