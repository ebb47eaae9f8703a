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

from typing import Callable, Iterable, Optional, Sequence

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

    def take(self, idx: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """The cached maps of training images ``idx``, as float32 on ``device``."""
        return [t[idx].to(device, torch.float32) for t in self.layers]


def train_on_features(
    backbone: torch.nn.Module,
    extract: Callable[[torch.Tensor], list[torch.Tensor]],
    train_loader,
    *,
    trainable: dict[str, torch.nn.Module],
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    context,
    config,
    desc: str,
    loss_format: str = ".4f",
) -> list[float]:
    """Train ``trainable`` on the features of a frozen ``backbone``; returns the per-epoch mean
    loss (weighted by batch size).

    Why one helper: Reverse Distillation and FastFlow train the same way -- one optimiser over
    the trained modules (in ``trainable``'s order), the backbone in eval mode and the trained
    modules in train mode, epochs of "features -> loss -> step" (``_train_epochs``), then eval
    mode for scoring -- and differ only in ``loss_fn`` and the optimiser (``make_optimizer``
    gets the parameters). ``extract`` maps images to the backbone's feature maps (the method's
    own forward, under ``--precision``); ``config`` is the method's configuration, of which
    ``epochs``, ``batch_size`` and ``cache_features`` are read.
    """
    optimizer = make_optimizer([p for module in trainable.values() for p in module.parameters()])
    backbone.eval()
    for module in trainable.values():
        module.train()
    history = _train_epochs(
        extract, train_loader, loss_fn, context=context, modules=trainable, optimizer=optimizer,
        epochs=config.epochs, cache=config.cache_features, batch_size=config.batch_size,
        desc=desc, loss_format=loss_format,
    )
    for module in trainable.values():
        module.eval()
    return history


def _train_epochs(
    extract: Callable[[torch.Tensor], list[torch.Tensor]],
    train_loader,
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    *,
    context,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    cache: bool,
    batch_size: int,
    desc: str,
    loss_format: str,
) -> list[float]:
    """Epochs of "frozen-backbone features -> loss -> step", resumable.

    With ``cache`` the features are computed once and replayed each epoch in the phase's seeded
    order (valid because the backbone is frozen and the method uses no image augmentation); without
    it (the paper profiles: 7 MB of WRN50 maps per image do not fit in RAM for 10,000 images)
    each epoch runs the backbone again, on images decoded once per job
    (``context.training_images``, in the job's DataLoader workers), in that same order. Either
    way a resumed run continues at the saved epoch and step (``adbench.training``); a finished
    training needs no features. Losses stay on the device (``Phase.step_done``): nothing here
    waits for the GPU inside an epoch.
    """
    from tqdm.auto import tqdm

    from adbench.data.batch_stream import BatchStream, gather, to_device
    from adbench.data.image_cache import as_float

    checkpoints, device = context.checkpoints, context.device
    if checkpoints.finished("train"):
        return list(checkpoints.phase("train", modules=modules).history)
    store = FeatureCache.build(extract, train_loader, device) if cache else None
    images = None if cache else context.training_images(train_loader)
    phase = checkpoints.phase("train", modules=modules, optimizers={"optimizer": optimizer})
    stream = None
    if images is not None:
        stream = BatchStream(phase.plan(epochs, len(images), batch_size), gather(images), context.inputs.in_process())
    bar = tqdm(phase.epochs(epochs), total=epochs, initial=phase.epoch, desc=desc, disable=not context.progress)
    for epoch in bar:
        if store is not None:
            batches = (store.take(idx, device) for idx in phase.batches(epoch, len(store), batch_size))
        else:
            batches = (extract(as_float(to_device(b, device))) for (b,) in stream.epoch(epoch))
        for feats in batches:
            loss = loss_fn(feats)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            phase.step_done(loss, len(feats[0]))
        bar.set_postfix(loss=f"{phase.epoch_done():{loss_format}}")
    if stream is not None:
        stream.close()
    phase.finish()
    checkpoints.training_done()
    return list(phase.history)
