"""Training batches made by DataLoader workers, the same whatever the number of workers.

A method describes a training phase as a *plan*: the tickets of its batches in order, one
``(epoch, key)`` per batch (``Phase.plan`` gives the epoch-based ones: key = the batch's image
indices in the phase's seeded order; a step-based method such as CutPaste uses key = step), and
a function ``make_batch(ticket)`` that builds the batch's tensors: indexing the decoded images,
drawing synthetic anomalies, augmenting. ``BatchStream`` runs ``make_batch`` in
``settings.workers`` worker processes (one whole batch per task: fewer hand-overs than one per
image), ``prefetch_factor`` batches ahead per worker, through pinned memory on CUDA, and the
training loop reads the batches epoch by epoch and copies them with ``to_device``
(``non_blocking``).

Why the results do not depend on the workers: every random draw inside ``make_batch`` comes
from ``sample_rng(seed, stream, epoch, sample)`` (``per_sample`` builds such a batch function
from a per-image one), a generator derived from its ticket alone, never from a generator that
advances as batches are made; workers return batches in plan order; and the DataLoader is given
its own torch generator, so starting workers draws nothing from the job's random state. A
resumed phase builds its plan from the saved (epoch, step) and gets the very same batches.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from adbench.data.input_settings import InputSettings, own_generator, worker_context

Ticket = tuple[int, Any]  # (epoch, key): key = image indices (tensor) or a step number


def sample_rng(seed: int, stream: str, epoch: int, sample: int) -> np.random.Generator:
    """The generator of one sample of one epoch: a function of these four values only."""
    tag = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, tag, int(epoch), int(sample)])


def per_sample(images: torch.Tensor, make_item: Callable[[torch.Tensor, np.random.Generator], Sequence[torch.Tensor]],
               seed: int, stream: str) -> "PerSample":
    """A batch function for epoch-based plans: ``make_item(image_uint8, rng)`` for each image
    index of the ticket, with ``sample_rng(seed, stream, epoch, index)``, stacked."""
    return PerSample(images, make_item, int(seed), stream)


class PerSample:
    """``per_sample``'s batch function (a class, not a closure: picklable where workers are
    not forked)."""

    def __init__(self, images, make_item, seed: int, stream: str):
        self.images, self.make_item, self.seed, self.stream = images, make_item, seed, stream

    def __call__(self, ticket: Ticket) -> tuple[torch.Tensor, ...]:
        epoch, idx = ticket
        items = [self.make_item(self.images[int(i)], sample_rng(self.seed, self.stream, epoch, int(i))) for i in idx]
        return tuple(torch.stack(parts) for parts in zip(*items))


class _Tickets(torch.utils.data.Dataset):
    """Map-style dataset whose keys are tickets: ``dataset[ticket]`` is one whole batch."""

    def __init__(self, make_batch: Callable[[Ticket], Any]):
        self.make_batch = make_batch

    def __getitem__(self, ticket: Ticket):
        with one_thread():
            return ticket[0], self.make_batch(ticket)


@contextlib.contextmanager
def one_thread():
    """Batches are made with one intra-op thread, in a worker (where PyTorch already sets one)
    and in the job's own process alike: synthetic anomalies are many tiny ops, and with the
    job's threads each op waits at a thread barrier (measured with benchmarks/
    bench_input_pipeline.py: DRAEM's anomalies several times slower on 2 threads than on 1).
    It also makes a batch the same whichever process makes it."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def _no_collate(item):
    return item


class BatchStream:
    """The batches of a plan, epoch by epoch: ``for batch in stream.epoch(e)``.

    One DataLoader serves the whole plan (its workers live as long as the phase), so there is
    no pipeline bubble at epoch boundaries."""

    def __init__(self, plan: Iterable[Ticket], make_batch: Callable[[Ticket], Any], settings: InputSettings):
        self.settings = settings
        workers = int(settings.workers)
        loader = torch.utils.data.DataLoader(
            _Tickets(make_batch), batch_size=None, sampler=_Plan(plan), num_workers=workers,
            collate_fn=_no_collate, pin_memory=bool(settings.pin_memory),
            prefetch_factor=settings.prefetch_factor if workers else None,
            multiprocessing_context=worker_context(workers),
            generator=own_generator(),  # never the job's global torch state
        )
        self._iterator: Optional[Iterator] = iter(loader)
        self._ahead: Optional[tuple[int, Any]] = None

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The batches of ``epoch`` (none if the plan has none left for it)."""
        while True:
            item = self._next()
            if item is None:
                return
            if item[0] != epoch:
                self._ahead = item
                return
            yield item[1]

    def _next(self):
        if self._ahead is not None:
            item, self._ahead = self._ahead, None
            return item
        if self._iterator is None:
            return None
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = None
            return None

    def close(self) -> None:
        """Stop the workers now (they also stop when the stream is garbage-collected)."""
        self._iterator = None


class _Plan(torch.utils.data.Sampler):
    """A (lazy) plan handed to the DataLoader as its sampler."""

    def __init__(self, plan: Iterable[Ticket]):
        self.plan = plan

    def __iter__(self):
        return iter(self.plan)


def to_device(tensors, device: torch.device):
    """Copy a batch (a tensor or a tuple of them) to ``device``; asynchronous from pinned memory."""
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device, non_blocking=True)
    return tuple(t.to(device, non_blocking=True) for t in tensors)


def gather(images: torch.Tensor) -> "Gather":
    """A batch function for plans without randomness: the ticket's images, uint8, one index op."""
    return Gather(images)


class Gather:
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __call__(self, ticket: Ticket) -> tuple[torch.Tensor]:
        return (self.images[ticket[1]],)
