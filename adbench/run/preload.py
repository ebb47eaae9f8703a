"""Imported once by the job server process (multiprocessing *forkserver*), before any job.

Every job runs in its own process forked from that server, so what is imported here (torch,
the metrics stack, the built-in methods and datasets) and what is cached here (package
versions, git commit, host facts) is paid for once per run instead of once per job, while each
job still gets a private process (crash and OOM isolation, its own peak memory). Nothing here
starts threads or touches CUDA (not even ``torch.cuda.is_available()``, which initialises
the driver), which keeps forking safe.
"""
from __future__ import annotations

import torch  # noqa: F401

import adbench.run.worker  # noqa: F401
from adbench import environment
from adbench.evaluation.streaming import StreamingEvaluator  # noqa: F401
from adbench.registry import DATASETS, METHODS

METHODS.load()
DATASETS.load()
environment.versions()
environment.git_commit()
# environment.host() is left to the job: it asks torch.cuda for the GPU name, and a CUDA
# driver initialised in the server would be inherited, broken, by every forked job.
