"""Frozen-backbone features computed once and replayed every epoch.

Why: Reverse Distillation's teacher and FastFlow's extractor are frozen and both methods train
without augmentation (MIAD appendix A.2.1, A.2.3), so the backbone's output for a training
image is the same in every epoch. On a CPU the backbone forward dominates an epoch (measured, one
thread, batch 32 at 256 px: tf_efficientnet_lite0 forward 1.6-3.0 CPU-s, the quick Reverse
Distillation student step 0.3-0.4 s, the quick FastFlow flow step 1.1-1.6 s), so the ``quick``
profiles compute it once. The result is the same training as recomputing it, up to
the storage precision: maps are kept as float16 (half the RAM; relative error ~5e-4, far below
anything the cosine or flow losses resolve) and handed back as float32.

Memory is ``N x sum(C*H*W) x 2`` bytes: about 0.33 MB per 256-px image for lite0 layers 1-3,
7 MB for wide_resnet50_2 -- which is why ``paper`` profiles (10k-image MIAD categories) do not
cache by default.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

from adbench.data import Batch


class FeatureCache:
    """Per-layer feature maps of a training set, [N, C, H, W] each, stored as float16."""

    def __init__(self, layers: Sequence[torch.Tensor]):
        self.layers = list(layers)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        extractor: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        loader: Iterable[Batch],
        device: torch.device,
        dtype: torch.dtype = torch.float16,
    ) -> "FeatureCache":
        chunks: Optional[list[list[torch.Tensor]]] = None
        for batch in loader:
            feats = extractor(batch.images.to(device))
            if chunks is None:
                chunks = [[] for _ in feats]
            for store, f in zip(chunks, feats):
                store.append(f.detach().to("cpu", dtype))
        if chunks is None:
            raise ValueError("empty training loader")
        return cls([torch.cat(c) for c in chunks])

    def __len__(self) -> int:
        return int(self.layers[0].shape[0])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.layers)

    def batches(
        self, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> Iterator[list[torch.Tensor]]:
        """One epoch: a seeded shuffle, then batches of ``batch_size`` (last one may be short,
        like the harness's train loaders)."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield [t[idx].to(device, torch.float32) for t in self.layers]


def epoch_feature_batches(
    backbone: Callable[[torch.Tensor], list[torch.Tensor]],
    train_loader: Iterable[Batch],
    *,
    cache: bool,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> Callable[[], Iterator[list[torch.Tensor]]]:
    """A callable yielding one epoch of frozen-backbone feature batches.

    With ``cache`` the features are computed once and replayed in a seeded shuffle each epoch
    (valid because the backbone is frozen and the method uses no image augmentation);
    without it they are recomputed from the loader every epoch.
    """
    if not cache:
        return lambda: (backbone(b.images.to(device)) for b in train_loader)
    store = FeatureCache.build(backbone, train_loader, device)
    generator = torch.Generator().manual_seed(int(seed))
    return lambda: store.batches(batch_size, generator, device)


def train_on_feature_batches(
    epoch_batches: Callable[[], Iterator[list[torch.Tensor]]],
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    desc: str,
    progress: bool,
    loss_format: str = ".4f",
) -> list[float]:
    """Plain epochs of SGD steps on feature batches; returns the per-epoch mean loss.

    Shared by the feature-reconstruction methods (Reverse Distillation, FastFlow) whose whole
    training loop is "features -> loss -> step"; the mean is weighted by batch size.
    """
    from tqdm.auto import tqdm

    history: list[float] = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for _ in bar:
        total, count = 0.0, 0
        for feats in epoch_batches():
            loss = loss_fn(feats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(feats[0])
            count += len(feats[0])
        history.append(total / max(count, 1))
        bar.set_postfix(loss=f"{history[-1]:{loss_format}}")
    return history
