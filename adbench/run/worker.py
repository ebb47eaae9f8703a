"""What runs inside a job's own process: build, fit, predict, evaluate, describe.

``execute_job(job)`` is the whole job and returns its records (one per category). It runs in a
child process (``executors.py``: a multiprocessing *spawn* child, or a Ray worker), so a crash,
an out-of-memory kill or leaked memory stays with the job, and the peak memory it reports is
its own. It never writes the store: records go back to the parent, which writes them, so a Ray
worker on another machine needs no access to the results folder.

Flow: seed Python/NumPy/torch -> index the categories -> ``detector = cls(config, context)``
-> ``preprocess()`` -> train loader -> ``fit`` (timed) -> per category: test loader ->
``predict`` per batch under ``torch.no_grad()`` (timed; shapes and finiteness checked) ->
``StreamingEvaluator`` -> record. A method that needs gradients at test time re-enables them
with ``torch.enable_grad()``.
"""
from __future__ import annotations

import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from adbench import environment
from adbench.errors import UserError
from adbench.jobs import Job
from adbench.results.records import METRIC_KEYS, base_record, failed_records, now
from adbench.precision import configure_backends
from adbench.run.workdirs import make_workdir


class JobError(RuntimeError):
    """A job-level failure with a clear message (bad prediction shape, NaN scores...)."""


def run_job_catching(job_dict: dict[str, Any], sys_path: Iterable[str] = ()) -> list[dict[str, Any]]:
    """``execute_job`` that turns any exception into failed records (used by every executor)."""
    for entry in reversed(list(sys_path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    job = Job(**job_dict)
    started = now()
    try:
        return execute_job(job, started)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the job failed, the run goes on
        message = _one_line(exc)
        return failed_records(job, message, traceback.format_exc(), started=started,
                              peak_rss_mb=round(environment.peak_rss_mb(), 1))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, UserError) and len(text) > 1:
        first = "; ".join(text[:5])
    return f"{type(exc).__name__}: {first}"[:2000]


def seed_everything(seed: int, device) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # warn_only: an op without a deterministic CPU kernel warns instead of failing the job.
        # The public torch.use_deterministic_algorithms also sets an inductor flag, and importing
        # torch._inductor costs ~2 CPU-seconds per job; nothing here compiles, so set the ATen
        # flag directly unless inductor is already loaded (then the public call is free).
        setter = getattr(torch._C, "_set_deterministic_algorithms", None)
        if "torch._inductor" in sys.modules or setter is None:
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            setter(True, warn_only=True)


def resolve_device(name: str):
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


@dataclass
class JobProcess:
    """How this process was set up for the job: device, threads, GPU facts, precision flags."""

    device: Any
    threads: int
    gpu: Optional[dict[str, Any]]
    precision_flags: dict[str, Any]


@dataclass
class Fitted:
    """A fitted detector and what its records say about the fit."""

    detector: Any
    context: Any
    preprocess: Any
    loading: dict[str, Any]  # DataLoader settings of the job's input pipeline
    n_train: int
    fit_seconds: float  # every attempt of a resumed job
    resumed_from: Optional[dict[str, Any]]
    shot_images: dict[str, list[str]] = field(default_factory=dict)  # k-shot: category -> drawn files
    with_replacement: bool = False  # k-shot with K below the batch size: batches drawn with replacement


def execute_job(job: Job, started: str | None = None) -> list[dict[str, Any]]:
    """The whole job: set the process up, fit on the training categories, evaluate each
    category; its records (one per category).

    A checkpoint that fails to restore after part of it was restored (``CheckpointRejected``:
    it is already moved aside, with one warning line) runs the whole job once more from
    scratch in this process, ignoring any checkpoint: ``set_up_process`` reseeds everything and
    the detector is built anew, so the metrics are those of a run that never had the file."""
    from adbench.registry import DATASETS, METHODS, load_plugins
    from adbench.training.checkpoints import CheckpointRejected

    started = started or now()
    rss_at_start = environment.rss_mb()
    load_plugins(job.plugins)
    METHODS.load()
    DATASETS.load()
    method_cls = METHODS.get(job.method)
    adapter = DATASETS.get(job.dataset)(job.data_root)
    indexes = {c: adapter.index(c) for c in job.categories}
    try:
        return run_attempt(job, method_cls, adapter, indexes, started, rss_at_start)
    except CheckpointRejected:
        pass  # rerun outside the handler: its traceback holds the first attempt's detector and data
    return run_attempt(job, method_cls, adapter, indexes, started, rss_at_start, fresh=True)


def run_attempt(job: Job, method_cls, adapter, indexes, started: str, rss_at_start,
                fresh: bool = False) -> list[dict[str, Any]]:
    """One attempt at the job in this process, from ``set_up_process`` to its records;
    ``fresh``: an existing checkpoint is not loaded (new ones are still written)."""
    process = set_up_process(job)
    workdir = make_workdir(job.workdir)
    try:
        fitted = fit_detector(job, method_cls, indexes, process, workdir, fresh=fresh)
        records = [evaluate_category(job, method_cls, fitted, process, indexes[c], adapter.category_info(c).kind,
                                     base_record(job, c, started))
                   for c in job.categories]
        finish_records(records, process.device, rss_at_start)
        return records
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def set_up_process(job: Job) -> JobProcess:
    """Threads (the CPUs this job was given: ``--jobs`` divides the machine, Ray grants them),
    device, seeds and numeric backends, before anything is built."""
    import torch

    if job.threads:
        torch.set_num_threads(int(job.threads))
    device = resolve_device("cuda" if job.gpu is not None and job.device != "cpu" else job.device)
    seed_everything(job.seed, device)
    threads = torch.get_num_threads()
    gpu = gpu_facts(device, job.gpu)
    precision_flags = configure_backends(job.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return JobProcess(device, threads, gpu, precision_flags)


def fit_detector(job: Job, method_cls, indexes, process: JobProcess, workdir: str, fresh: bool = False) -> Fitted:
    """Build the detector from the job's resolved config and fit it on the training images of
    every training category (timed; a resumed job adds its earlier attempts' time; ``fresh``:
    the job's checkpoint is not loaded)."""
    from adbench.config import resolve_config
    from adbench.data import make_loader
    from adbench.data.shots import draw_shots, shot_names
    from adbench.detector import RunContext

    config = resolve_config(method_cls.Config, {"paper": {}}, "paper", job.config, method=job.method)
    if job.shots is not None:
        method_cls.check_shots(config, job.shots)  # FewShotError: the job stops before fitting
    checkpoints = make_checkpointing(job, method_cls, process.device, threads=process.threads, fresh=fresh)
    context = RunContext(device=process.device, seed=job.seed, weights=job.weights, profile=job.profile,
                         progress=job.progress, workdir=workdir,
                         categories={c: indexes[c].info for c in job.categories}, checkpoints=checkpoints,
                         precision=job.precision, inputs=input_settings(job, process.device))
    detector = method_cls(config, context)
    preprocess = detector.preprocess()
    loading = {"num_workers": context.inputs.workers, "pin_memory": context.inputs.pin_memory}
    drawn = {c: draw_shots(indexes[c].train, job.shots, job.seed, c) for c in job.categories}
    train = [s for c in job.categories for s in drawn[c]]
    batch_size = int(getattr(config, "batch_size", 32))
    # k-shot: a network trainer's batch larger than K is filled by drawing with replacement
    # (recorded), never refused (``Detector.trains_networks``)
    with_replacement = job.shots is not None and method_cls.trains_networks and len(train) < batch_size
    train_loader = make_loader(train, preprocess, batch_size=batch_size, train=True, seed=job.seed,
                               with_replacement=with_replacement, **loading)
    t0 = time.perf_counter()
    detector.fit(train_loader)
    _sync(process.device)
    context.release_training_images()
    fit_seconds = checkpoints.fit_seconds_before + (time.perf_counter() - t0)
    resumed = checkpoints.resumed
    resumed_from = None if resumed is None else {
        "phase": resumed.phase, "epoch": resumed.epoch, "step": resumed.step, "saved_at": resumed.saved_at,
        "fit_seconds_before": resumed.fit_seconds_before, "final": resumed.final}
    shot_images = {c: shot_names(drawn[c]) for c in job.categories} if job.shots is not None else {}
    return Fitted(detector, context, preprocess, loading, len(train), fit_seconds, resumed_from, shot_images,
                  with_replacement)


def evaluate_category(job: Job, method_cls, fitted: Fitted, process: JobProcess, index, kind: str,
                      record: dict[str, Any]) -> dict[str, Any]:
    """Score one category's test set and complete its record."""
    from adbench.data import make_loader

    config, detector, context = fitted.detector.config, fitted.detector, fitted.context
    batch_size = int(getattr(config, "batch_size", 32))
    eval_batch_size = int(getattr(config, "eval_batch_size", None) or batch_size)
    test_loader = make_loader(index.test, fitted.preprocess, batch_size=eval_batch_size, train=False,
                              **fitted.loading)
    record["training_categories"] = list(job.categories)
    record.update(evaluate(detector, test_loader, process.device, method_cls, record["category"],
                           progress=job.progress, save_predictions=job.save_predictions))
    checkpoints = context.checkpoints
    record.update(
        status="ok", category_kind=kind, geometry=fitted.preprocess.describe(),
        **detector.weights_info().record_fields(),
        n_parameters=int(detector.num_parameters()), record_extras=storable_extras(detector),
        device=str(process.device), gpu=process.gpu,
        host={**record["host"], "gpu_name": process.gpu["name"] if process.gpu else None},
        fit_seconds=round(fitted.fit_seconds, 3), resumed_from=fitted.resumed_from,
        steps_this_attempt=checkpoints.steps_this_attempt, checkpoints=checkpoints.report(),
        knn_device=detector.knn_device(), input_pipeline=context.inputs.record(),
        image_cache=context.image_cache_facts(), **process.precision_flags,
        n_train_images=fitted.n_train, torch_threads=process.threads,
        shots=job.shots, shot_images=fitted.shot_images.get(record["category"]) if job.shots is not None else None,
        train_batches_with_replacement=fitted.with_replacement,
        torch_threads_attempts=checkpoints.threads_attempts,
    )
    return record


def finish_records(records: list[dict[str, Any]], device, rss_at_start) -> None:
    """What only the end of the job knows: peak memory (process and CUDA), finish time."""
    import torch

    peak_rss = round(environment.peak_rss_mb(), 1)
    peak_cuda = round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    finished = now()
    for record in records:
        record.update(peak_rss_mb=peak_rss, rss_at_start_mb=_round(rss_at_start), peak_cuda_mb=peak_cuda,
                      finished=finished)


def input_settings(job: Job, device):
    """The job's ``adbench.data.input_settings.InputSettings``: ``--workers`` / ``--cache-gb`` when given,
    else the defaults for the CPUs the job has and the jobs that share its machine (a job with
    ``threads`` of a machine's cores is one of ``cores // threads`` jobs at once)."""
    from adbench.data.input_settings import InputSettings, default_cache_bytes, default_workers
    from adbench.data.input_settings import job_cpus

    cpus = job_cpus(job.threads)
    workers = default_workers(cpus, on_gpu=device.type == "cuda") if job.workers is None else int(job.workers)
    at_once = max(1, job_cpus(None) // cpus) if job.threads else 1
    cache = default_cache_bytes(at_once) if job.cache_gb is None else int(job.cache_gb * 2**30)
    return InputSettings(workers=workers, cache_bytes=cache, pin_memory=device.type == "cuda")


def gpu_facts(device, physical_index: Optional[int]) -> Optional[dict[str, Any]]:
    """``{index, name, uuid}`` of the GPU the job ran on (None on CPU): the physical index the
    executor pinned (``CUDA_VISIBLE_DEVICES``), else the device's own index."""
    import torch

    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    index = physical_index if physical_index is not None else (device.index or 0)
    return {"index": index, "name": props.name, "uuid": str(getattr(props, "uuid", "") or "")}


def make_checkpointing(job: Job, method_cls, device, threads: Optional[int] = None, fresh: bool = False):
    """The job's ``Checkpointing``: a file at ``job.checkpoint_path`` unless checkpoints are off
    (no path, or ``--checkpoint-every 0``); ``fresh``: an existing one is not loaded. NaN checks
    run every step on CPU (free) and every 50 steps on a GPU (each check waits for the device).
    ``threads``: this attempt's torch threads (kept in the header for the record's
    ``torch_threads_attempts``)."""
    from pathlib import Path

    from adbench.training import Checkpointing
    from adbench.training.checkpoints import CheckpointFile

    every = float(job.checkpoint_every or 0)
    file = None
    if job.checkpoint_path and every > 0:
        file = CheckpointFile(Path(job.checkpoint_path), job.identity(), int(getattr(method_cls, "VERSION", 1)),
                              use_existing=not fresh)
    return Checkpointing(file=file, every_seconds=every, seed=job.seed, threads=threads,
                         check_every_steps=1 if device.type == "cpu" else 50)


@dataclass
class Scored:
    """What one pass over a test set measured besides the metrics."""

    n_images: int = 0
    n_cropped: int = 0  # anomalous images whose defect the geometry's crop cut away
    predict_seconds: float = 0.0  # inside predict() only
    test_seconds: float = 0.0  # the whole pass, loading included, FLOP counting excluded
    flops: Optional[int] = None


def evaluate(detector, loader, device, method_cls, category: str, progress: bool = False,
             save_predictions: bool = False) -> dict[str, Any]:
    """Predict every test batch, stream the metrics, and return the record's evaluation fields
    (metrics, undefined reasons, per-defect metrics, timings, throughput, FLOPs)."""
    from adbench.evaluation.streaming import StreamingEvaluator
    from adbench.results import predictions

    evaluator = StreamingEvaluator(fpr_limit=0.3)
    collector = predictions.Collector() if save_predictions else None
    scored = score_test_set(detector, loader, device, method_cls, evaluator, collector, category, progress)
    out = evaluation_fields(evaluator.compute(), scored)
    if collector is not None:
        out[predictions.ATTACHED] = collector.arrays()
    return out


def score_test_set(detector, loader, device, method_cls, evaluator, collector, category: str,
                   progress: bool) -> Scored:
    """One pass of ``predict`` under ``torch.no_grad()`` over the test loader (timed; shapes and
    finiteness checked), feeding the evaluator and the saved-predictions collector."""
    import torch
    from tqdm import tqdm

    scored = Scored()
    t_start = time.perf_counter()
    bar = tqdm(total=len(loader.dataset), desc=f"test {category}", unit="img", leave=False,
               disable=not progress, file=sys.stderr)
    for batch in loader:
        bar.update(len(batch))
        labels = batch.labels.numpy().astype(np.int64)
        masks = batch.masks.numpy().astype(bool) if batch.masks is not None else None
        if batch.defect_cropped is not None:
            scored.n_cropped += int(batch.defect_cropped.sum())
        batch = batch.to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            prediction = detector.predict(batch)
        _sync(device)
        scored.predict_seconds += time.perf_counter() - t0
        if scored.flops is None:  # a second pass over one image of the first batch, not in test_seconds
            t_flops = time.perf_counter()
            scored.flops = _count_flops(detector, batch)
            t_start += time.perf_counter() - t_flops
        scores, maps = _check_prediction(prediction, batch, method_cls)
        evaluator.update(scores=scores, labels=labels, defect_types=list(batch.defect_types), maps=maps, masks=masks)
        if collector is not None:
            collector.update(scores, labels, maps, masks, batch.paths, batch.defect_types)
        scored.n_images += len(labels)
    bar.close()
    scored.test_seconds = time.perf_counter() - t_start
    return scored


def evaluation_fields(result, scored: Scored) -> dict[str, Any]:
    """The record's fields from the evaluator's result: every metric key present (None with a
    reason in ``undefined`` when it could not be computed), timings and throughput."""
    result_dict = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    values = result_dict.get("values", {}) or {}
    metrics = {k: _finite_or_none(values.get(k)) for k in METRIC_KEYS}
    for k, v in values.items():  # keep any extra metric the evaluator provides
        metrics.setdefault(k, _finite_or_none(v))
    undefined = dict(result_dict.get("undefined", {}) or {})
    for k in METRIC_KEYS:
        if metrics[k] is None and k not in undefined:
            undefined[k] = "not computed"
    predict_seconds, test_seconds = scored.predict_seconds, scored.test_seconds
    return {
        "predict_flops_per_image": scored.flops,
        "undefined": undefined,
        "per_defect": result_dict.get("per_defect", {}) or {},
        "counts": result_dict.get("counts", {}) or {"n_images": scored.n_images},
        "n_defect_cropped": scored.n_cropped,
        "test_seconds": round(test_seconds, 3),
        "predict_seconds": round(predict_seconds, 3),
        "test_throughput": round(scored.n_images / predict_seconds, 3) if predict_seconds > 0 else None,
        "test_throughput_end_to_end": round(scored.n_images / test_seconds, 3) if test_seconds > 0 else None,
        "metrics": metrics,
    }


def _count_flops(detector, batch):
    """FLOPs per test image of ``predict`` (torch's FlopCounterMode: matmuls and convolutions,
    the operations that dominate; elementwise work is not counted), or None if counting fails."""
    import dataclasses

    import torch

    try:
        from torch.utils.flop_counter import FlopCounterMode

        one = dataclasses.replace(
            batch, images=batch.images[:1], labels=batch.labels[:1], paths=batch.paths[:1],
            categories=batch.categories[:1], defect_types=batch.defect_types[:1],
            masks=None if batch.masks is None else batch.masks[:1],
            defect_cropped=None if batch.defect_cropped is None else batch.defect_cropped[:1])
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            detector.predict(one)
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - an uncountable op must not fail the job
        return None


def storable_extras(detector) -> dict[str, Any]:
    """``record_extras()``, checked: it must be a dict that survives the trip to the run's
    process (pickle) and into the JSON record; otherwise the job fails saying so, instead of
    dying later with "exited without a result"."""
    import json
    import pickle

    extras = detector.record_extras() or {}
    if not isinstance(extras, dict):
        raise JobError(f"record_extras() returned {type(extras).__name__}, expected a dict")
    for key, value in extras.items():
        try:
            pickle.dumps(value)
            json.dumps(value, allow_nan=True, default=_not_json)
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot be stored"
            raise JobError(f"record_extras()[{key!r}] cannot be stored in a record "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    return extras


def _not_json(value):
    import numpy as np

    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _round(value, digits: int = 1):
    return None if value is None else round(float(value), digits)


def _finite_or_none(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _check_prediction(prediction, batch, method_cls) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores [B] and maps [B, H, W] of the batch geometry, all finite, or a JobError."""
    if not hasattr(prediction, "numpy"):
        raise JobError(f"predict() returned {type(prediction).__name__}, expected Prediction")
    b = len(batch)
    h, w = int(batch.images.shape[-2]), int(batch.images.shape[-1])
    raw_scores = prediction.scores
    shape = tuple(getattr(raw_scores, "shape", np.shape(raw_scores)))
    if shape not in ((b,), (b, 1)):
        raise JobError(f"predict() returned scores of shape {shape}, expected [{b}] for a batch of {b}")
    scores, maps = prediction.numpy()
    if not np.all(np.isfinite(scores)):
        bad = int((~np.isfinite(scores)).sum())
        raise JobError(f"predict() returned {bad} non-finite (NaN/inf) image scores of {b}")
    if maps is None:
        if getattr(method_cls, "produces_maps", False):
            raise JobError("predict() returned no maps although the method declares produces_maps = True")
        return scores, None
    if maps.shape != (b, h, w):
        raise JobError(f"predict() returned maps of shape {tuple(maps.shape)}, expected [{b}, {h}, {w}] "
                       f"(the batch's image geometry)")
    if not np.all(np.isfinite(maps)):
        raise JobError("predict() returned anomaly maps with non-finite (NaN/inf) values")
    return scores, maps


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
