"""Kill a detector's training at a chosen optimiser step, resume it, compare with an
uninterrupted run (issue 15: "resume equals uninterrupted").

``train_three_ways`` runs one method three times from the same seeds, as the worker would
(``seed_everything`` before the detector is built): uninterrupted; killed right after step
``kill_at`` (a checkpoint is written after every step, so the last one is at ``kill_at``: the
kill falls wherever the test puts it, mid-epoch included); and resumed from that checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from adbench.training import Checkpointing
from adbench.training.checkpoints import CheckpointFile
from adbench.training.session import Phase
from adbench.run.worker import seed_everything


class SimulatedKill(BaseException):
    """Raised where ``kill -9`` would fall (BaseException: nothing in a method catches it)."""


def checkpointing(path: Path, seed: int, every: float = 1e-9) -> Checkpointing:
    identity = {"test": "resume", "seed": seed}
    return Checkpointing(file=CheckpointFile(path, identity, version=1), every_seconds=every, seed=seed)


def fit_killed(build: Callable[[Checkpointing], object], data, path: Path, kill_at: int, seed: int = 0,
               monkeypatch=None) -> None:
    """Train with a checkpoint after every step and stop dead right after step ``kill_at``."""
    real = Phase.step_done
    count = {"n": 0}

    def step_done(self, loss, n=1):
        real(self, loss, n)
        count["n"] += 1
        if count["n"] == kill_at:
            raise SimulatedKill()

    monkeypatch.setattr(Phase, "step_done", step_done)
    seed_everything(seed, torch.device("cpu"))
    detector = build(checkpointing(path, seed))
    try:
        detector.fit(data)
    except SimulatedKill:
        pass
    else:
        raise AssertionError(f"training ended before step {kill_at}")
    finally:
        monkeypatch.setattr(Phase, "step_done", real)


def train_three_ways(build: Callable[[Checkpointing], object], data, tmp_path: Path, kill_at: int,
                     monkeypatch, seed: int = 0):
    """(uninterrupted detector, resumed detector, resumed Checkpointing)."""
    seed_everything(seed, torch.device("cpu"))
    whole = build(Checkpointing(seed=seed))
    whole.fit(data)
    path = tmp_path / "job.ckpt"
    fit_killed(build, data, path, kill_at, seed, monkeypatch)
    assert path.is_file(), "no checkpoint was written before the kill"
    seed_everything(seed, torch.device("cpu"))
    ckpt = checkpointing(path, seed, every=1e9)
    resumed = build(ckpt)
    resumed.fit(data)
    return whole, resumed, ckpt
