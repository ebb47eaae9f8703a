"""Resumable training, as every trained method writes it.

A method's ``fit`` asks its job's ``Checkpointing`` (``RunContext.checkpoints``) for one
``Phase`` per training stage, registering what that stage changes (modules, optimisers,
schedulers, its own random generators), and runs its loop through the phase::

    phase = self.context.checkpoints.phase("train", modules={"net": net}, optimizers={"adam": opt},
                                           schedulers={"lr": sched}, generators={"anomalies": rng})
    for epoch in phase.epochs(epochs):
        for idx in phase.batches(epoch, n_images, batch_size):
            loss = ...; opt.zero_grad(); loss.backward(); opt.step()
            phase.step_done(loss, len(idx))
        sched.step()
        phase.epoch_done()
    phase.finish()
    ...
    self.context.checkpoints.training_done()

Call ``phase(...)`` right before its loop, with no random draws in between: a resumed phase
restores the random states of the moment it was saved, so a draw between ``phase()`` and the
loop would happen in a fresh run but not in a resumed one.

What the phase does for the method:

* **Data order without state.** Epoch ``e`` of phase ``p`` visits the training set in a
  permutation drawn from a generator seeded by (job seed, p, e), so the position in the data
  order is just (epoch, step): nothing about a loader has to be saved, and a resumed epoch
  replays the same order and skips the steps already done (``batches`` epoch by epoch,
  ``plan`` for a worker pipeline that runs ahead, ``adbench.data`` input pipeline).
* **Checkpoints.** After a step, when ``--checkpoint-every`` seconds have passed since the last
  save, the complete state is written: the registered modules, optimisers and schedulers,
  every random state (``adbench.training.rng``), the epoch, the step, the loss accumulators and
  history, and the final states of the phases already finished. ``training_done`` writes the
  final checkpoint (with ``--keep-checkpoints`` it is the trained model).
* **Resume.** When the job's checkpoint exists and belongs to it, a finished phase restores its
  modules and the random states it ended with, and reports ``done`` (the method skips its
  loop); the phase in progress restores everything and continues at the saved epoch and step.
  ``steps_this_attempt`` counts what ran. A finished phase must be asked for with the same
  generators as when it ran (a done phase restores them for the phases after it).
* **Divergence.** A loss that becomes NaN or infinite stops the job at once as failed, naming
  the phase, epoch and step (``TrainingDiverged``), instead of training on for hours.

Determinism: on CPU with the same seed and thread count a resumed job equals an uninterrupted
one exactly (tests/test_training_resume.py); a method that cannot promise it says why.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import torch

from adbench.options import DEFAULT_CHECKPOINT_EVERY
from adbench.training import rng as rng_state
from adbench.training.checkpoints import CheckpointFile, Header, log, now_iso


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (the job fails at once, saying where)."""


def epoch_permutation(seed: int, phase: str, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a permutation of ``range(n)`` from (seed, phase, epoch)."""
    digest = hashlib.sha256(f"{int(seed)}/{phase}/{int(epoch)}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randperm(n, generator=generator)


def _state_dicts(objects: Mapping[str, Any]) -> dict[str, Any]:
    return {name: obj.state_dict() for name, obj in objects.items()}


def _load_state_dicts(objects: Mapping[str, Any], saved: Mapping[str, Any], what: str) -> None:
    if set(objects) != set(saved):
        raise ValueError(f"checkpoint has {what} {sorted(saved)}, the method registers {sorted(objects)}")
    for name, obj in objects.items():
        obj.load_state_dict(saved[name])


def _module_bytes(modules: Mapping[str, torch.nn.Module]) -> int:
    total = 0
    for module in modules.values():
        for t in list(module.parameters()) + list(module.buffers()):
            total += t.numel() * t.element_size()
    return total


@dataclass
class Checkpointing:
    """The checkpoints of one job. ``file=None`` (outside the harness, or ``--checkpoint-every
    0``) keeps every API working without writing anything."""

    file: Optional[CheckpointFile] = None
    every_seconds: float = DEFAULT_CHECKPOINT_EVERY
    seed: int = 0
    check_every_steps: int = 1  # how often a loss is checked for NaN (1 on CPU: free there)
    clock: Any = time.monotonic
    resumed: Optional[Header] = None  # the header this attempt resumed from
    steps_this_attempt: int = 0
    _saved: Optional[dict[str, Any]] = None  # the loaded checkpoint's state
    _loaded: bool = False
    _finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> final state
    _from_earlier: set[str] = field(default_factory=set)  # finished in an earlier attempt, not yet restored
    _current: Optional["Phase"] = None
    _last_save: float = 0.0
    _attempt_started: float = 0.0
    _space_checked: bool = False
    saves: int = 0  # checkpoints written by this attempt (the record's ``checkpoints``)
    save_seconds: float = 0.0
    last_bytes: int = 0
    largest_bytes: int = 0  # mid-training ones hold the optimiser's state too

    def __post_init__(self) -> None:
        self._last_save = self._attempt_started = self.clock()

    @property
    def enabled(self) -> bool:
        return self.file is not None and self.file.disabled is None

    @property
    def fit_seconds_before(self) -> float:
        return float(self.resumed.fit_seconds_before) if self.resumed is not None else 0.0

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.file is None:
            return
        found = self.file.load()
        if found is None:
            return
        header, state = found
        self.resumed, self._saved = header, state
        self._finished = dict(state.get("finished", {}))
        self._from_earlier = set(self._finished)
        log(f"resuming from checkpoint {self.file.path}: {header.describe()}")

    # --- the API methods use ---------------------------------------------------------------------
    def phase(self, name: str, *, modules: Mapping[str, torch.nn.Module] | None = None,
              optimizers: Mapping[str, Any] | None = None, schedulers: Mapping[str, Any] | None = None,
              generators: Mapping[str, Any] | None = None) -> "Phase":
        self._load_once()
        phase = Phase(self, name, dict(modules or {}), dict(optimizers or {}), dict(schedulers or {}),
                      dict(generators or {}))
        if name in self._from_earlier:
            self._from_earlier.discard(name)
            phase._restore(self._finished[name], finished=True)
        elif self._saved is not None and self._saved.get("current", {}).get("name") == name:
            phase._restore(self._saved["current"], finished=False)
        self._current = None if phase.done else phase
        return phase

    def finished(self, name: str) -> bool:
        """Whether phase ``name`` finished in an earlier attempt (its inputs need not be built)."""
        self._load_once()
        return name in self._from_earlier

    def training_done(self) -> None:
        """Training is over: write the final checkpoint (every phase finished)."""
        self._current = None
        self.save(final=True)

    # --- saving ------------------------------------------------------------------------------------
    def due(self) -> bool:
        return self.enabled and self.every_seconds > 0 and self.clock() - self._last_save >= self.every_seconds

    def save(self, final: bool = False) -> None:
        if not self.enabled:
            return
        state: dict[str, Any] = {"finished": self._finished}
        if self._current is not None:
            state["current"] = self._current._state()
        if not self._space_checked:
            self._space_checked = True
            if not self.file.check_space(self._estimate_bytes()):
                return
        cur = self._current
        header = Header(
            identity=dict(self.file.identity), version=self.file.version,
            phase=cur.name if cur is not None else "", epoch=cur.epoch if cur is not None else 0,
            step=cur.step if cur is not None else 0, saved_at=now_iso(),
            fit_seconds_before=round(self.fit_seconds_before + (self.clock() - self._attempt_started), 3),
            final=final,
        )
        started = time.perf_counter()
        if self.file.save(header, state):
            self.saves += 1
            self.save_seconds += time.perf_counter() - started
            self.last_bytes = self.file.size_on_disk()
            self.largest_bytes = max(self.largest_bytes, self.last_bytes)
        self._last_save = self.clock()

    def report(self) -> Optional[dict[str, Any]]:
        """What checkpointing cost this attempt (None when it was off): the record's
        ``checkpoints`` field, so its overhead is visible next to ``fit_seconds``."""
        if self.file is None:
            return None
        return {"written": self.saves, "seconds": round(self.save_seconds, 3), "bytes": self.last_bytes,
                "largest_bytes": self.largest_bytes, "disabled": self.file.disabled}

    def _estimate_bytes(self) -> int:
        """Modules x 3 (weights + an optimiser's two moments), finished phases included."""
        total = 0
        if self._current is not None:
            total += 3 * _module_bytes(self._current.modules)
        for saved in self._finished.values():
            for sd in saved.get("modules", {}).values():
                total += sum(t.numel() * t.element_size() for t in sd.values() if isinstance(t, torch.Tensor))
        return max(total, 1 << 20)


class Phase:
    """One training stage of a method (see the module docstring)."""

    def __init__(self, owner: Checkpointing, name: str, modules, optimizers, schedulers, generators):
        self.owner, self.name = owner, name
        self.modules, self.optimizers, self.schedulers, self.generators = modules, optimizers, schedulers, generators
        self.done = False
        self.epoch = 0  # epoch in progress (or next to run)
        self.step = 0  # steps of that epoch already done
        self.history: list[float] = []  # mean loss of each finished epoch
        self.total_steps = 0  # steps done in this phase, all attempts
        self.extra_state: dict[str, Any] = {}
        self._sum: Optional[torch.Tensor] = None
        self._count = 0
        self._bad: Optional[torch.Tensor] = None
        self._resumed_mid_epoch = False

    # --- iteration ---------------------------------------------------------------------------------
    def epochs(self, n_epochs: int) -> Iterator[int]:
        """Epoch indices from where this phase stands (0 on a fresh start)."""
        while self.epoch < n_epochs and not self.done:
            yield self.epoch
            self.epoch += 1
            self.step = 0

    def order(self, epoch: int, n: int) -> torch.Tensor:
        return epoch_permutation(self.owner.seed, self.name, epoch, n)

    def batches(self, epoch: int, n: int, batch_size: int, *, min_batch: int = 1,
                max_steps: Optional[int] = None) -> Iterator[torch.Tensor]:
        """Index batches of epoch ``epoch`` over ``n`` items, skipping the steps already done.
        ``min_batch`` drops a shorter last batch (batch-norm needs 2); ``max_steps`` caps it."""
        return self._epoch_batches(epoch, n, batch_size, min_batch, max_steps, skip=self.step)

    def plan(self, n_epochs: int, n: int, batch_size: int, *, min_batch: int = 1,
             max_steps: Optional[int] = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Every batch still to run, as ``(epoch, image indices)`` tickets, from where the phase
        stands now to the end of epoch ``n_epochs - 1``: the same batches ``batches`` gives
        epoch by epoch, for a worker pipeline that runs ahead of the loop (``adbench.data`` input pipeline).
        Lazy, but fixed by the (epoch, step) of the moment it is called."""
        first_epoch, first_step = self.epoch, self.step

        def tickets() -> Iterator[tuple[int, torch.Tensor]]:
            for epoch in range(first_epoch, int(n_epochs)):
                skip = first_step if epoch == first_epoch else 0
                for idx in self._epoch_batches(epoch, n, batch_size, min_batch, max_steps, skip=skip):
                    yield epoch, idx

        return tickets()

    def _epoch_batches(self, epoch: int, n: int, batch_size: int, min_batch: int,
                       max_steps: Optional[int], *, skip: int) -> Iterator[torch.Tensor]:
        """The one definition of an epoch's batches (``batches`` and ``plan`` both read it): the
        seeded permutation cut into ``batch_size`` slices, capped at ``max_steps``, the first
        ``skip`` steps left out (already done before a resume) and a last slice shorter than
        ``min_batch`` dropped. A skipped step still counts, so step numbers match the saved ones."""
        order = self.order(epoch, n)
        starts = list(range(0, n, int(batch_size)))
        if max_steps is not None:
            starts = starts[: max(1, int(max_steps))]
        for i, start in enumerate(starts):
            idx = order[start : start + int(batch_size)]
            if i < skip or len(idx) < min_batch:
                continue
            yield idx

    def steps(self, n_steps: int) -> Iterator[int]:
        """Step-based training (no epochs: CutPaste's 256-step "epochs" are a schedule unit)."""
        while self.step < n_steps and not self.done:
            yield self.step

    # --- per step ----------------------------------------------------------------------------------
    def step_done(self, loss: torch.Tensor, n: int = 1) -> None:
        """Count the step, accumulate its loss (on its device), stop on NaN/inf, maybe save."""
        loss = loss.detach().float()
        self._sum = loss * n if self._sum is None else self._sum + loss * n
        self._count += int(n)
        bad = ~torch.isfinite(loss)
        self._bad = bad if self._bad is None else (self._bad | bad)
        self.step += 1
        self.total_steps += 1
        self.owner.steps_this_attempt += 1
        if self.total_steps % max(1, self.owner.check_every_steps) == 0:
            self._check_finite()
        if self.owner.due():
            self._check_finite()
            self.owner.save()

    def _check_finite(self) -> None:
        if self._bad is not None and bool(self._bad):
            last, k = self.step - 1, max(1, self.owner.check_every_steps)
            where = f"step {last}" if k == 1 else f"one of steps {max(0, last - k + 1)}..{last}"
            raise TrainingDiverged(f"training loss became NaN or infinite in phase {self.name}, epoch {self.epoch}, "
                                   f"{where} (steps counted from 0 in each epoch)")

    def epoch_done(self) -> float:
        """Close the epoch: its mean loss goes into ``history`` (read once here, not per step)."""
        self._check_finite()
        mean = float(self._sum / max(self._count, 1)) if self._sum is not None else float("nan")
        self.history.append(mean)
        self._sum, self._count, self._bad = None, 0, None
        return mean

    def finish(self, extra: Optional[dict[str, Any]] = None) -> None:
        """The phase is complete: its final state is kept for every later checkpoint."""
        self._check_finite()
        if extra is not None:
            self.extra_state = dict(extra)
        self.done = True
        self.owner._finished[self.name] = self._state(final=True)
        if self.owner._current is self:
            self.owner._current = None

    # --- state ---------------------------------------------------------------------------------------
    def _state(self, final: bool = False) -> dict[str, Any]:
        state = {
            "name": self.name, "epoch": self.epoch, "step": self.step, "history": list(self.history),
            "total_steps": self.total_steps, "modules": _state_dicts(self.modules), "extra": self.extra_state,
            # at the end of a phase too: the next phase must start from the random states this
            # one ended with, whether it ran in this attempt or was restored
            "rng": rng_state.capture(self.generators),
        }
        if not final:
            state.update(
                optimizers=_state_dicts(self.optimizers), schedulers=_state_dicts(self.schedulers),
                loss_sum=None if self._sum is None else self._sum.detach().cpu(), loss_count=self._count,
            )
        return state

    def _restore(self, saved: Mapping[str, Any], finished: bool) -> None:
        _load_state_dicts(self.modules, saved.get("modules", {}), "modules")
        self.history = list(saved.get("history", []))
        self.total_steps = int(saved.get("total_steps", 0))
        self.extra_state = dict(saved.get("extra") or {})
        self.epoch, self.step = int(saved.get("epoch", 0)), int(saved.get("step", 0))
        rng_state.restore(saved["rng"], self.generators, partial=finished)
        if finished:
            self.done = True
            return
        _load_state_dicts(self.optimizers, saved["optimizers"], "optimizers")
        _load_state_dicts(self.schedulers, saved["schedulers"], "schedulers")
        for optimizer in self.optimizers.values():
            # it did step before the checkpoint: without this flag torch warns "lr_scheduler.step()
            # before optimizer.step()" when a resumed epoch has no step left before the schedule
            optimizer._opt_called = True  # noqa: SLF001
        device = next((p.device for m in self.modules.values() for p in m.parameters()), torch.device("cpu"))
        self._sum = None if saved.get("loss_sum") is None else saved["loss_sum"].to(device)
        self._count = int(saved.get("loss_count", 0))
