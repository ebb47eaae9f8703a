"""The result record: what one (job, category) leaves behind, as plain JSON.

Fields (all records, ok or failed):

* identity: ``method, dataset, category, category_kind, protocol, training_categories, seed,
  profile, config, config_hash, weights`` (the ``--weights`` option), ``device`` (the one
  used, ``--device auto`` resolved), ``record_name``
* ``status`` (``ok`` | ``failed``) and ``error`` (one line; ``traceback`` holds the rest)
* ``metrics``: every metric key with its value, ``null`` when undefined; ``undefined``: metric
  -> reason; ``per_defect``: defect type -> {image_auroc, n}; ``counts``
* ``geometry`` (``Preprocess.describe()``), ``n_defect_cropped``
* ``weights_tag`` (the exact timm tag the detector loaded, ``random`` or ``none``),
  ``weights_source`` (which file, or timm's download) and ``weights_sha256`` (of that file),
  ``n_parameters``, ``record_extras``
* ``fit_seconds``, ``test_seconds`` (whole test pass: decoding, predict, metrics),
  ``predict_seconds`` (sum of ``predict`` calls), ``test_throughput`` (test images per second
  of ``predict``; images already decoded), ``test_throughput_end_to_end``
* ``peak_rss_mb``: peak resident memory of the job's own process, which includes the ~0.4 GB
  every job process holds before it starts (Python, torch, adbench imports);
  ``rss_at_start_mb`` is that baseline, so ``peak - start`` is what the job itself added.
  ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` (null on CPU)
* ``versions``, ``git_commit``, ``host``, ``started``, ``finished``
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Optional

from adbench import environment
from adbench.jobs import Job

#: metric keys every record lists (null when undefined); tables know them by these names
METRIC_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_f1_max",
    "pixel_f1_max",
    "image_ap",
    "pixel_ap",
    "image_auroc_mapmax",
    "image_f1_max_mapmax",
    "image_ap_mapmax",
    "pixel_auroc_anomalous",  # over the anomalous test images only (ToCoAD's pixel protocol)
)

RECORD_VERSION = 1


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_record(job: Job, category: str, started: Optional[str] = None) -> dict[str, Any]:
    return {
        "record_version": RECORD_VERSION,
        "record_name": job.record_name(category),
        "method": job.method,
        "dataset": job.dataset,
        "data_root": job.data_root,
        "category": category,
        "category_kind": job.category_kinds.get(category),
        "protocol": job.protocol,
        "training_categories": list(job.categories),
        "seed": job.seed,
        "shots": job.shots,  # k-shot protocol: K training images per category (None: all)
        "profile": job.profile,
        "config": job.config,
        "config_hash": job.config_hash,
        "weights": job.weights,
        "device": job.device,
        "status": None,
        "error": None,
        "metrics": {k: None for k in METRIC_KEYS},
        "undefined": {},
        "per_defect": {},
        "counts": {},
        "geometry": None,
        "n_defect_cropped": None,
        "weights_tag": None,
        "weights_source": None,
        "weights_sha256": None,
        "n_parameters": None,
        "record_extras": {},
        "fit_seconds": None,  # every attempt of the job added up (a resumed job's earlier ones too)
        "resumed_from": None,  # {phase, epoch, step, saved_at, fit_seconds_before} when resumed
        "steps_this_attempt": None,  # optimiser steps run by this attempt
        "precision": job.precision,  # and the flags it set (adbench.precision.configure_backends)
        "autocast": None,
        "tf32": None,
        "cudnn_benchmark": None,
        "channels_last": None,
        "knn_device": None,  # where the nearest-neighbour search ran (PatchCore family), from the index
        "checkpoints": None,  # {written, seconds, bytes (last), largest_bytes, disabled}; None when off
        "test_seconds": None,
        "predict_seconds": None,
        "test_throughput": None,
        "test_throughput_end_to_end": None,
        "peak_rss_mb": None,
        "rss_at_start_mb": None,
        "peak_cuda_mb": None,
        "versions": environment.versions(),
        "git_commit": environment.git_commit(),
        "host": environment.host(),
        "gpu": None,  # {index, name, uuid} of the GPU the job ran on (null on CPU)
        "torch_threads": None,  # intra-op threads of the job: float reductions (and so a
        # training trajectory) can change with it, so it is part of reproducing a number
        "started": started or now(),
        "finished": None,
    }


def failed_records(job: Job, error: str, traceback: str = "", started: Optional[str] = None,
                   **extra: Any) -> list[dict[str, Any]]:
    """One failed record per category of the job (a unified job fails for all of them)."""
    out = []
    for category in job.categories:
        record = base_record(job, category, started)
        record.update(extra)
        record.update(status="failed", error=error, traceback=traceback or None, finished=now())
        out.append(record)
    return out
