"""The training set decoded once per job, at the method's geometry, kept as uint8.

Why: methods that train for many epochs (or many augmented steps) over the same images used to
decode and resize every file again each epoch (FastFlow's and Reverse Distillation's paper
path: 5 million decodes for 500 epochs over 10,000 images) or each keep their own copy
(DRAEM, the autoencoder, CutPaste, and ToCoAD twice). Here one job decodes each training image
exactly once, in the job's DataLoader workers, into one uint8 [N, 3, S, S] array: in RAM when it
fits the job's cache budget, else memory-mapped in the job's work folder (``arrays``). uint8 is
exact: the float images the harness hands out are this array divided by 255.

``DecodedImages.loader`` replays the cached images as the harness's training batches (float in
[0, 1], paths, categories), so code written for a training loader (PatchCore's memory bank on
ToCoAD's fine-tuned extractor) reads the cache instead of the files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch

from adbench.data.loaders import SampleDataset, collate
from adbench.data.samples import Batch, Sample
from adbench.data.arrays import Placed, ram_or_disk
from adbench.data.input_settings import InputSettings, own_generator, worker_context

DECODE_BATCH = 32


@dataclass
class DecodedImages:
    """uint8 [N, 3, S, S] training images (``tensor``), their samples, and where they live."""

    tensor: torch.Tensor
    samples: list[Sample] = field(default_factory=list)
    placed: Optional[Placed] = None
    decode_seconds: float = 0.0
    exact: bool = True  # tensor / 255 is exactly what the loader gave (always so for files)

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def describe(self) -> dict[str, Any]:
        """The record's ``image_cache``: images, bytes, RAM or disk, time spent decoding."""
        where = self.placed.describe() if self.placed is not None else {"where": "ram", "bytes": 0}
        return {"images": len(self), **where, "decode_seconds": round(self.decode_seconds, 3)}

    def loader(self, batch_size: int) -> torch.utils.data.DataLoader:
        """The cached images as training batches in file order (no decoding, no workers:
        indexing RAM is faster than handing tensors between processes). Only ``exact`` caches
        stand in for their loader."""
        return torch.utils.data.DataLoader(_CachedSamples(self), batch_size=int(batch_size), shuffle=False,
                                           num_workers=0, collate_fn=collate, generator=own_generator())


class _CachedSamples(torch.utils.data.Dataset):
    """``SampleDataset``'s training items, read from the cache (``samples`` as it has)."""

    def __init__(self, images: DecodedImages):
        self.images, self.samples = images, images.samples

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        return {"image": as_float(self.images.tensor[index]), "label": int(s.label), "path": str(s.path),
                "category": s.category, "defect_type": s.defect_type}


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Cached uint8 images -> float in [0, 1], exactly what the harness's loader gives (float
    images, from a loader outside the harness, pass through as float)."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def decode_training_images(train_loader: Iterable[Batch], settings: InputSettings,
                           workdir: Optional[str] = None) -> DecodedImages:
    """Decode every training image once into a ``DecodedImages``.

    The harness's training loader (a DataLoader over a ``SampleDataset``) is decoded in file
    order by ``settings.workers`` worker processes straight to uint8. Any other iterable of
    batches (a detector used outside the harness) is read once and converted."""
    import time

    started = time.perf_counter()
    dataset = getattr(train_loader, "dataset", None)
    if isinstance(train_loader, torch.utils.data.DataLoader) and isinstance(dataset, SampleDataset):
        images = _decode_dataset(dataset, settings, workdir)
    else:
        images = _from_batches(train_loader)
    images.decode_seconds = time.perf_counter() - started
    return images


def _decode_dataset(dataset: SampleDataset, settings: InputSettings, workdir: Optional[str]) -> DecodedImages:
    samples = list(dataset.samples)
    size = dataset.preprocess.output_size
    placed = ram_or_disk((len(samples), 3, size, size), torch.uint8, settings.cache_bytes, workdir, "decoded-images")
    source = SampleDataset(samples, dataset.preprocess, with_masks=False, uint8=True)
    loader = torch.utils.data.DataLoader(source, batch_size=DECODE_BATCH, shuffle=False, collate_fn=collate,
                                         num_workers=settings.workers,
                                         prefetch_factor=settings.prefetch_factor if settings.workers else None,
                                         multiprocessing_context=worker_context(settings.workers),
                                         generator=own_generator())
    start = 0
    for batch in loader:
        placed.tensor[start : start + len(batch)] = batch.images
        start += len(batch)
    return DecodedImages(placed.tensor, samples, placed)


def _from_batches(batches: Iterable[Batch]) -> DecodedImages:
    chunks, samples, exact = [], [], True
    for batch in batches:
        images = batch.images.cpu()
        if images.dtype != torch.uint8:
            quantised = (images * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
            exact = exact and torch.equal(quantised.float() / 255.0, images.float())
            images = quantised
        chunks.append(images)
        samples += [Sample(path=p, label=0, category=c, split="train")  # type: ignore[arg-type]
                    for p, c in zip(batch.paths, batch.categories)]
    tensor = torch.cat(chunks) if chunks else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    return DecodedImages(tensor, samples, Placed(tensor, "ram"), exact=exact)
