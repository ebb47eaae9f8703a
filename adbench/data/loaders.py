"""torch Datasets and DataLoaders over samples: read in place, the method's geometry applied.

Train loaders shuffle (seeded) and carry no masks; test loaders keep order and carry masks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from adbench.data.input_settings import worker_context
from adbench.data.samples import Batch, Preprocess, Sample, load_mask, load_rgb


class SampleDataset(torch.utils.data.Dataset):
    """Reads samples in place (never copies data) and applies the method's geometry.
    ``uint8`` hands images over as uint8 (the decoded-image cache) instead of float in [0, 1]."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess, with_masks: bool, uint8: bool = False):
        self.samples = list(samples)
        self.preprocess = preprocess
        self.with_masks = with_masks
        self.uint8 = uint8

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        img = load_rgb(sample.path)
        item = {
            "image": self.preprocess.image_uint8(img) if self.uint8 else self.preprocess.image(img),
            "label": int(sample.label),
            "path": str(sample.path),
            "category": sample.category,
            "defect_type": sample.defect_type,
        }
        if self.with_masks:
            if sample.mask_path is not None:
                raw = load_mask(sample.mask_path)
            else:
                raw = np.zeros((img.height, img.width), dtype=bool)
            mask = self.preprocess.mask(raw)
            item["mask"] = mask
            item["defect_cropped"] = bool(sample.label == 1 and raw.any() and not bool(mask.any()))
        return item


def collate(items: list[dict]) -> Batch:
    batch = Batch(
        images=torch.stack([it["image"] for it in items]),
        labels=torch.tensor([it["label"] for it in items], dtype=torch.long),
        paths=[it["path"] for it in items],
        categories=[it["category"] for it in items],
        defect_types=[it["defect_type"] for it in items],
    )
    if "mask" in items[0]:
        batch.masks = torch.stack([it["mask"] for it in items])
        batch.defect_cropped = torch.tensor([it["defect_cropped"] for it in items])
    return batch


def make_loader(
    samples: Sequence[Sample],
    preprocess: Preprocess,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    uint8: bool = False,
    with_replacement: bool = False,
) -> torch.utils.data.DataLoader:
    """Train loaders shuffle (seeded) and carry no masks; test loaders keep order and masks.
    ``num_workers`` decode in worker processes (``adbench.data.input_settings``), ``pin_memory``
    lets CUDA copies run asynchronously; neither changes a batch. ``with_replacement`` (k-shot
    training sets smaller than a batch): each epoch is one full batch drawn with replacement."""
    dataset = SampleDataset(samples, preprocess, with_masks=not train, uint8=uint8)
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if with_replacement:
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch_size,
                                                 generator=generator)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        multiprocessing_context=worker_context(num_workers),
        collate_fn=collate,
        generator=generator,
        persistent_workers=False,
    )
