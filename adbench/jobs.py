"""Jobs: the unit of work of a run, and how a command line expands into a grid of them.

A job is (method, dataset, categories, seed, shots, protocol, config hash, weights). Under the
``single`` protocol it trains on one category and writes one record; under ``unified`` it
trains one model on the union of the training sets of all selected categories and writes one
record per category, so its key holds the *set* of categories.

A ``Job`` is plain, frozen data (strings, numbers, a config dict): it crosses process
boundaries (multiprocessing, Ray) by pickling without dragging detector classes along, and the
child rebuilds everything from it. Its fields are the job's own (below, ``JOB_FIELDS``) plus
every run option declared ``in_job`` in ``adbench.options.RUN_OPTIONS`` (``--precision``,
``--workers`` ...), so a new option reaches the jobs by its declaration alone. Where a job runs
(``threads``, ``gpu``) is set by the executor with ``dataclasses.replace``, never by patching.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict
from typing import Any, Optional, Sequence

from adbench.options import PROTOCOLS, RUN_OPTIONS, Option, dataclass_field

__all__ = ["Job", "JOB_FIELDS", "PROTOCOLS", "categories_hash", "job_class"]

#: the fields a job has whatever the options: (name, type, default), MISSING for none and
#: ``dict`` for a new empty dict each. ``shots``: the k-shot protocol's K (None: every training
#: image; ``adbench.data.shots``). ``config`` is
#: the method's resolved config (dataclass values); ``categories`` one for ``single``, the
#: training set for ``unified``; ``checkpoint_path`` None means no checkpoints; ``threads`` and
#: ``gpu`` (CPU threads, physical GPU index) are the executor's.
JOB_FIELDS: tuple[tuple[str, Any, Any], ...] = (
    ("method", str, dataclasses.MISSING),
    ("categories", list, dataclasses.MISSING),
    ("seed", int, dataclasses.MISSING),
    ("config", dict, dataclasses.MISSING),
    ("config_hash", str, dataclasses.MISSING),
    ("shots", Optional[int], None),
    ("category_kinds", dict, dict),
    ("checkpoint_path", Optional[str], None),
    ("threads", Optional[int], None),
    ("gpu", Optional[int], None),
)


class JobIdentity:
    """What a job is called and keyed by; ``Job`` adds the fields (``job_class``).

    None of the fields from options that never change a result (``--workers``, ``--cache-gb``,
    ``--save-predictions``, checkpoints, where it runs) is part of ``key()``.
    """

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
            self.shots,
        )

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been written for to be resumed by this job."""
        identity = {"method": self.method, "dataset": self.dataset, "categories": sorted(self.categories),
                    "seed": self.seed, "protocol": self.protocol, "config_hash": self.config_hash,
                    "weights": self.weights_tag, "precision": self.precision}
        if self.shots is not None:  # (absent otherwise: checkpoints written before --shots still resume)
            identity["shots"] = self.shots
        return identity

    def record_name(self, category: str) -> str:
        """File name of the record of ``category`` (unique per job key and category)."""
        parts = [category, self.protocol_tag, f"s{self.seed}"] + ([f"k{self.shots}"] if self.shots else [])
        parts.append(self.config_hash)
        if self.weights_tag:
            parts.append(self.weights_tag)
        if self.precision_tag:
            parts.append(self.precision_tag)
        return "__".join(parts) + ".json"

    @property
    def label(self) -> str:
        cats = self.categories[0] if self.protocol == "single" else f"unified[{','.join(self.categories)}]"
        return f"{self.method}/{self.dataset}/{cats}/s{self.seed}" + (f"/{self.shots}-shot" if self.shots else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_class(options: Sequence[Option] = RUN_OPTIONS) -> type:
    """The frozen ``Job`` dataclass: ``JOB_FIELDS`` plus one field per ``in_job`` option, with
    the option's declared default."""
    fields = []
    for name, type_, default in JOB_FIELDS:
        if default is dataclasses.MISSING:
            fields.append((name, type_))
        elif default is dict:
            fields.append((name, type_, dataclasses.field(default_factory=dict)))
        else:
            fields.append((name, type_, dataclasses.field(default=default)))
    fields += [dataclass_field(o) for o in options if o.in_job]
    cls = dataclasses.make_dataclass("Job", fields, bases=(JobIdentity,), frozen=True)
    cls.__module__ = __name__  # pickles as adbench.jobs.Job (to job processes and Ray tasks)
    cls.__doc__ = "One job of a run (adbench.jobs): its own fields and the in-job run options."
    return cls


Job = job_class()


def categories_hash(categories: list[str]) -> str:
    blob = json.dumps(sorted(categories))
    return hashlib.sha256(blob.encode()).hexdigest()[:6]
