"""A job's share of the machine's input resources: DataLoader workers and cache RAM.

Defaults (``--workers auto``, ``--cache-gb auto``):

* workers, on a GPU: the CPUs the job has, minus one for the training loop itself, at most 8
  (past that the workers of a GPU job only wait; PyTorch's own advice is "a few per GPU").
* workers, on a CPU: none. The model step already runs on every core the job has, so a worker
  only takes cores from it: measured on 2 idle cores (benchmarks/bench_input_pipeline.py),
  DRAEM's quick epoch took 6.07 s with one worker against 5.30 s with none. ``--workers N``
  still helps a CPU job whose input work dominates (decoding large images, heavy anomalies).
* cache RAM: a quarter of the machine's available memory, divided between the jobs that run at
  once. The rest is left to the models, the page cache and the workers' own copies.

A job that runs alone on a CPU machine and is given ``--workers 0`` decodes in its own process,
as before this package existed. The number of workers never changes a result (``stream``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

MAX_DEFAULT_WORKERS = 8
CACHE_SHARE_OF_AVAILABLE = 0.25


@dataclass(frozen=True)
class InputSettings:
    """What a job may use for its inputs. ``pin_memory`` is set for CUDA jobs only."""

    workers: int = 0
    cache_bytes: int = 2 << 30
    pin_memory: bool = False
    prefetch_factor: int = 2  # batches each worker keeps ready (DataLoader's default)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def in_process(self) -> "InputSettings":
        """The same settings without workers, for batches that are only an index into the
        decoded images: handing them between processes costs more than the indexing (measured:
        FastFlow's quick epoch 16 % slower with a worker on 2 cores)."""
        return replace(self, workers=0)


def job_cpus(threads: Optional[int]) -> int:
    """The CPUs a job has: the threads the executor gave it, else the cores this process may use."""
    if threads:
        return int(threads)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(cpus: int, on_gpu: bool = True) -> int:
    """On a GPU: one worker per CPU of the job but one (the training loop's), at most 8; on a
    CPU: none (module docstring)."""
    if not on_gpu:
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, int(cpus) - 1))


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory, else 8 GiB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_cache_bytes(jobs_at_once: int) -> int:
    """A quarter of the available memory, divided between the jobs that run at once."""
    return int(available_memory_bytes() * CACHE_SHARE_OF_AVAILABLE / max(1, int(jobs_at_once)))


def own_generator():
    """The torch generator every input DataLoader gets. A DataLoader without one draws its
    workers' base seed from the job's global torch generator each time it is iterated, which
    would shift every later random draw of the training (initialisation, dropout, noise)
    against a run that decoded or streamed differently. Nothing random is drawn from it."""
    import torch

    return torch.Generator().manual_seed(0)


def worker_context(workers: int):
    """The multiprocessing context of a job's DataLoader workers: ``fork`` where the platform
    has it. A job runs in a process started by a forkserver (``adbench.run.executors``), whose
    default start method would make every worker import torch again (seconds each) and pickle
    its dataset; forked workers share the job's decoded images instead of copying them. Workers
    never touch CUDA, which is what makes forking a CUDA job safe. None with no workers."""
    import multiprocessing

    if not workers:
        return None
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
