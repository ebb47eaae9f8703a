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
* **A checkpoint that does not fit.** Before a phase restores anything, the saved state is
  checked against what the method registers (``restore_problem``: every module's state dict keys
  and shapes, the optimisers' groups and per-parameter state shapes, the schedulers, the
  generators). A checkpoint that does not fit (an architecture change without a ``VERSION``
  bump) is moved aside with one warning line (``CheckpointFile.reject``). When nothing was
  restored yet, the attempt simply goes on as a fresh start (nothing it did depended on the
  checkpoint); when an earlier phase was already restored, or ``finished`` already answered
  yes, or a restore fails half-way, ``CheckpointRejected`` is raised and the job starts again
  from scratch (``adbench.run.worker.execute_job``), so its metrics are those of a run that
  never had the checkpoint.
* **Threads.** ``threads_attempts``: the torch threads of every attempt that trained this job's
  state (carried in the checkpoint header), since float reductions depend on them.
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
from adbench.training.checkpoints import CheckpointFile, CheckpointRejected, Header, log, now_iso, one_line


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


#: per-parameter optimiser state shaped like its parameter (Adam/AdamW, SGD, Adagrad, RMSprop, ...)
PARAMETER_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "sum", "square_avg",
                    "acc_delta", "grad_avg", "exp_inf", "ax", "prev")


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _names_problem(what: str, saved: Any, mine: Mapping[str, Any]) -> Optional[str]:
    if not isinstance(saved, Mapping):
        return f"{what}: {type(saved).__name__} in the checkpoint"
    if set(saved) != set(mine):
        return f"{what} {sorted(saved)} in the checkpoint, {sorted(mine)} in the method"
    return None


def _modules_problem(modules: Mapping[str, torch.nn.Module], saved: Any) -> Optional[str]:
    """Keys and shapes of every module's state dict against the saved ones (what a strict
    ``load_state_dict`` would refuse, found before anything is copied)."""
    problem = _names_problem("modules", saved, modules)
    for name, module in modules.items():
        if problem:
            return problem
        mine, theirs = module.state_dict(), saved[name]
        if not isinstance(theirs, Mapping):
            return f"module {name}: {type(theirs).__name__} in the checkpoint, not a state dict"
        missing, unexpected = [k for k in mine if k not in theirs], [k for k in theirs if k not in mine]
        if missing or unexpected:
            return f"module {name}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
        for key, value in mine.items():
            if isinstance(value, torch.Tensor) and (not isinstance(theirs[key], torch.Tensor)
                                                    or theirs[key].shape != value.shape):
                return f"module {name}: {key} is {_shape(theirs[key])} in the checkpoint, {_shape(value)} in the model"
    return problem


def _optimizer_problem(name: str, optimizer: Any, saved: Any) -> Optional[str]:
    """Parameter groups, their sizes and the parameter-shaped state against the optimiser."""
    groups = optimizer.param_groups
    if not isinstance(saved, Mapping) or not isinstance(saved.get("param_groups"), list):
        return f"optimizer {name}: no parameter groups in the checkpoint"
    if len(saved["param_groups"]) != len(groups):
        return f"optimizer {name}: {len(saved['param_groups'])} parameter groups in the checkpoint, {len(groups)} here"
    pairs = []
    for i, (theirs, mine) in enumerate(zip(saved["param_groups"], groups)):
        ids = theirs.get("params", []) if isinstance(theirs, Mapping) else []
        if len(ids) != len(mine["params"]):
            return f"optimizer {name}: group {i} has {len(ids)} parameters in the checkpoint, {len(mine['params'])} here"
        pairs.extend(zip(ids, mine["params"]))
    state = saved.get("state") or {}
    for pid, param in pairs:
        for key, value in (state.get(pid) or {}).items():
            if key in PARAMETER_SHAPED and isinstance(value, torch.Tensor) and value.shape != param.shape:
                return (f"optimizer {name}: {key} of parameter {pid} is {_shape(value)} in the checkpoint, "
                        f"{_shape(param)} in the model")
    return None


def _generators_problem(generators: Mapping[str, Any], saved: Any, partial: bool) -> Optional[str]:
    if not isinstance(saved, Mapping) or not all(k in saved for k in ("python", "numpy", "torch")):
        return "no random states in the checkpoint"
    if not isinstance(saved["torch"], torch.Tensor) or saved["torch"].shape != torch.get_rng_state().shape:
        return f"torch random state is {_shape(saved['torch'])} in the checkpoint"
    theirs = saved.get("generators") or {}
    if not partial and set(theirs) != set(generators):
        return f"generators {sorted(theirs)} in the checkpoint, {sorted(generators)} in the method"
    for name, gen in generators.items():
        kind = (theirs.get(name) or {}).get("kind") if name in theirs else None
        if name in theirs and kind != ("torch" if isinstance(gen, torch.Generator) else "numpy"):
            return f"generator {name} is a {kind} generator in the checkpoint, a {type(gen).__name__} here"
    return None


def restore_problem(phase: "Phase", saved: Any, finished: bool) -> Optional[str]:
    """Why ``saved`` cannot be restored into ``phase`` (None when it fits), checked without
    touching anything: modules, random generators, and for a phase in progress its optimisers
    and schedulers."""
    if not isinstance(saved, Mapping):
        return f"its state is {type(saved).__name__}"
    problem = (_modules_problem(phase.modules, saved.get("modules", {}))
               or _generators_problem(phase.generators, saved.get("rng"), partial=finished))
    if problem or finished:
        return problem
    problem = (_names_problem("optimizers", saved.get("optimizers"), phase.optimizers)
               or _names_problem("schedulers", saved.get("schedulers"), phase.schedulers))
    for name, optimizer in phase.optimizers.items():
        problem = problem or _optimizer_problem(name, optimizer, saved["optimizers"][name])
    return problem


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
    threads: Optional[int] = None  # torch threads of this attempt (None: torch.get_num_threads())
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
    _touched: bool = False  # something of the checkpoint was restored, or ``finished`` said yes
    _announced: bool = False  # "resuming from checkpoint" was said
    saves: int = 0  # checkpoints written by this attempt (the record's ``checkpoints``)
    save_seconds: float = 0.0
    last_bytes: int = 0
    largest_bytes: int = 0  # mid-training ones hold the optimiser's state too

    def __post_init__(self) -> None:
        self._last_save = self._attempt_started = self.clock()
        if self.threads is None:
            self.threads = torch.get_num_threads()

    @property
    def threads_attempts(self) -> list[int]:
        """Torch threads of every attempt whose training this job's state holds, this one last
        (the record's ``torch_threads_attempts``)."""
        earlier = list(self.resumed.torch_threads_attempts) if self.resumed is not None else []
        return [*earlier, int(self.threads)]

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
        if not isinstance(state, Mapping) or not isinstance(state.get("finished", {}), Mapping):
            self.file.reject("does not fit the model (it holds no training state)")
            return
        self.resumed, self._saved = header, state
        self._finished = dict(state.get("finished", {}))
        self._from_earlier = set(self._finished)

    def _resumed_once(self) -> None:
        """Something of the checkpoint was used: say so, the first time."""
        if not self._announced and self.resumed is not None:
            self._announced = True
            log(f"resuming from checkpoint {self.file.path}: {self.resumed.describe()}")

    # --- the API methods use ---------------------------------------------------------------------
    def phase(self, name: str, *, modules: Mapping[str, torch.nn.Module] | None = None,
              optimizers: Mapping[str, Any] | None = None, schedulers: Mapping[str, Any] | None = None,
              generators: Mapping[str, Any] | None = None) -> "Phase":
        self._load_once()
        phase = Phase(self, name, dict(modules or {}), dict(optimizers or {}), dict(schedulers or {}),
                      dict(generators or {}))
        if name in self._from_earlier:
            self._from_earlier.discard(name)
            self._restore(phase, self._finished[name], finished=True)
        elif self._saved is not None and (self._saved.get("current") or {}).get("name") == name:
            self._restore(phase, self._saved["current"], finished=False)
        self._current = None if phase.done else phase
        return phase

    def finished(self, name: str) -> bool:
        """Whether phase ``name`` finished in an earlier attempt (its inputs need not be built)."""
        self._load_once()
        if name in self._from_earlier:
            self._touched = True  # the method acts on it: a later rejection needs a restart
            self._resumed_once()
            return True
        return False

    def _restore(self, phase: "Phase", saved: Any, finished: bool) -> None:
        """Check, then restore; a checkpoint that does not fit is rejected (``_reject``)."""
        problem = restore_problem(phase, saved, finished)
        if problem is not None:
            self._reject(f"does not fit the model (phase {phase.name}: {problem})")
            return
        self._touched = True
        try:
            phase._restore(saved, finished=finished)
        except Exception as exc:  # noqa: BLE001 - whatever a restore raises, the checkpoint is the cause
            self._reject(f"does not load into the model (phase {phase.name}: {one_line(exc)})")
        self._resumed_once()

    def _reject(self, reason: str) -> None:
        """Move the checkpoint aside (one warning) and forget it. Nothing restored yet: this
        attempt goes on as a fresh start; otherwise ``CheckpointRejected`` (start again)."""
        self.file.reject(reason)
        self.resumed, self._saved, self._finished, self._from_earlier = None, None, {}, set()
        if self._touched:
            raise CheckpointRejected(self.file.path, reason)

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
            final=final, torch_threads_attempts=self.threads_attempts,
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
