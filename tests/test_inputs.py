"""The input pipeline (issue 16, ``adbench.data`` input pipeline): every training image is decoded once per
job, batches come out the same whatever the number of workers, caches spill to the work folder,
and UniAD's features spill to a float16 file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import adbench.data.loaders as data_module  # where SampleDataset decodes (load_rgb)
from adbench.config import resolve_config
from adbench.data import Preprocess, Sample, make_loader
from adbench.detector import RunContext
from adbench.data.batch_stream import BatchStream, gather, per_sample
from adbench.data.input_settings import InputSettings
from adbench.data.image_cache import decode_training_images
from adbench.data.arrays import ram_or_disk
from adbench.registry import METHODS
from adbench.training import Checkpointing
from striped_category import one_thread  # noqa: F401 (autouse: these tests run single-threaded)


def image_folder(tmp_path, n: int = 8, size: int = 48) -> list[Sample]:
    """``n`` striped JPEG files of ``size`` px (decoding them costs something, like real data)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        yy, xx = np.mgrid[0:size, 0:size]
        base = 127 + 80 * np.sin(xx / 3.0 + rng.uniform(0, 6.28))
        img = np.stack([base, base * 0.8, base * 0.6], -1) + rng.normal(0, 6, (size, size, 3))
        path = tmp_path / f"{i:03d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)
        samples.append(Sample(path=path, label=0, category="stripes", split="train"))
    return samples


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts ``load_rgb`` calls made in this process (workers=0 keeps every decode here)."""
    counter = {"n": 0}
    real = data_module.load_rgb

    def counting(path):
        counter["n"] += 1
        return real(path)

    monkeypatch.setattr(data_module, "load_rgb", counting)
    return counter


def _detector(method: str, overrides: dict, inputs: InputSettings | None = None, workdir=None):
    cls = METHODS.get(method)
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick", overrides)
    context = RunContext(seed=0, weights="random", inputs=inputs or InputSettings(), workdir=workdir,
                         checkpoints=Checkpointing(seed=0))
    return cls(cfg, context)


@pytest.mark.parametrize("method, overrides", [
    ("autoencoder", {"image_size": 32, "epochs": 3, "batch_size": 4, "max_steps": None}),
    ("draem", {"image_size": 32, "recon_width": 4, "disc_width": 4, "epochs": 3, "batch_size": 4,
               "max_steps": None, "score_filter": 5}),
    ("reverse_distillation", {"backbone": "resnet18.tv_in1k", "image_size": 32, "epochs": 3, "batch_size": 4,
                              "cache_features": False}),
    ("fastflow", {"backbone": "resnet18.tv_in1k", "image_size": 32, "epochs": 3, "batch_size": 4,
                  "flow_steps": 2, "cache_features": False}),
])
def test_three_epochs_decode_each_training_image_once(tmp_path, count_decodes, method, overrides):
    samples = image_folder(tmp_path)
    detector = _detector(method, overrides)
    loader = make_loader(samples, detector.preprocess(), batch_size=4, train=True)
    detector.fit(loader)
    assert count_decodes["n"] == len(samples)  # was 3 x 8 for the paper paths of RD and FastFlow
    assert detector.context.image_cache_facts()["images"] == len(samples)


def test_tocoad_stages_and_memory_bank_share_one_decode(tmp_path, count_decodes):
    from test_tocoad import small_config

    samples = image_folder(tmp_path)
    cfg = small_config(dnp_epochs=1, ncl_epochs=1, batch_size=4, coreset_ratio=0.5)
    detector = METHODS.get("tocoad")(cfg, RunContext(seed=0, weights="random", checkpoints=Checkpointing(seed=0)))
    loader = make_loader(samples, detector.preprocess(), batch_size=4, train=True)
    detector.fit(loader)
    assert count_decodes["n"] == len(samples)  # was twice: once for the stages, once for the bank


def test_cache_matches_the_loader_and_spills_to_the_workdir_beyond_its_budget(tmp_path):
    (tmp_path / "img").mkdir()
    samples = image_folder(tmp_path / "img")
    preprocess = Preprocess(image_size=40, crop_size=32)
    loader = make_loader(samples, preprocess, batch_size=3, train=True)
    in_ram = decode_training_images(loader, InputSettings(cache_bytes=1 << 30))
    on_disk = decode_training_images(loader, InputSettings(cache_bytes=0), workdir=str(tmp_path / "work"))
    assert in_ram.describe()["where"] == "ram" and on_disk.describe()["where"] == "disk"
    assert list((tmp_path / "work").glob("decoded-images*"))
    assert torch.equal(in_ram.tensor, on_disk.tensor)
    expected = torch.stack([preprocess.image(data_module.load_rgb(s.path)) for s in samples])
    assert torch.equal(in_ram.tensor.float() / 255.0, expected)  # exact: the cache is what the loader gave


def test_decoding_and_streaming_draw_nothing_from_the_jobs_random_state(tmp_path):
    """A run's later random draws (dropout, noise) must not depend on how its images were
    loaded: the cache, its loader and the batch streams never touch the global generator."""
    samples = image_folder(tmp_path)
    loader = make_loader(samples, Preprocess(image_size=32), batch_size=4, train=True)
    before = torch.get_rng_state()
    images = decode_training_images(loader, InputSettings(workers=2))
    list(images.loader(4))
    phase = Checkpointing(seed=0).phase("p")
    stream = BatchStream(phase.plan(2, len(images), 4), gather(images.tensor), InputSettings(workers=2))
    for epoch in phase.epochs(2):
        list(stream.epoch(epoch))
    assert torch.equal(torch.get_rng_state(), before)


def test_ram_or_disk_keeps_small_arrays_in_ram(tmp_path):
    assert ram_or_disk((4, 4), torch.float32, 64, str(tmp_path), "a").where == "ram"
    placed = ram_or_disk((4, 4), torch.float16, 31, str(tmp_path), "b")  # 32 bytes
    assert placed.where.endswith("b.bin") and placed.tensor.dtype == torch.float16
    placed.tensor[1, 2] = 3.0
    assert float(np.load(placed.where, mmap_mode="r")[1, 2]) == 3.0


def _draem_batches(workers: int, epochs: int = 2) -> list:
    from adbench.methods.draem import DRAEMAnomalySampler, TextureSource

    gen = torch.Generator().manual_seed(3)
    images = (torch.rand(10, 3, 32, 32, generator=gen) * 255).to(torch.uint8)
    sampler = DRAEMAnomalySampler(TextureSource(None))
    ckpt = Checkpointing(seed=5)
    phase = ckpt.phase("train")
    stream = BatchStream(phase.plan(epochs, len(images), 4), per_sample(images, sampler, 5, "draem/anomalies"),
                         InputSettings(workers=workers))
    out = []
    for epoch in phase.epochs(epochs):
        out += [(epoch, batch) for batch in stream.epoch(epoch)]
    return out


def test_zero_and_two_workers_give_identical_training_batches():
    alone, two = _draem_batches(0), _draem_batches(2)
    assert [e for e, _ in alone] == [0, 0, 0, 1, 1, 1] == [e for e, _ in two]
    for (_, a), (_, b) in zip(alone, two):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    masks = torch.cat([b[2] for _, b in alone])
    assert masks.any() and not masks.all()  # anomalies were drawn, and not everywhere
    # a different epoch draws different anomalies for the same image
    assert not torch.equal(alone[0][1][1], alone[3][1][1]) or not torch.equal(alone[0][1][2], alone[3][1][2])


def test_cutpaste_steps_are_identical_with_zero_and_two_workers():
    from adbench.methods.cutpaste import CutPasteTrainer

    cls = METHODS.get("cutpaste")
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick", {"image_size": 32, "backbone": "resnet18.tv_in1k"})
    images = (torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    trainer = CutPasteTrainer(cfg, RunContext(seed=0, weights="random"))

    def steps(workers):
        plan = ((0, step) for step in range(4))
        stream = BatchStream(plan, lambda t: trainer.step_batch(images, "full", t[1]), InputSettings(workers=workers))
        return list(stream.epoch(0))

    alone, two = steps(0), steps(2)
    assert len(alone) == 4
    for (xa, ya), (xb, yb) in zip(alone, two):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(alone[0][0], alone[1][0])


def test_tocoad_stage_batches_are_identical_with_zero_and_two_workers():
    """ToCoAD's G (rotation, anomaly, the other image it borrows) runs in the workers, seeded per
    (seed, stage, epoch, image): 0 and 2 workers give the same stage-II batches."""
    from adbench.methods._tocoad_training import ToCoADTrainer
    from test_tocoad import small_config

    images = (torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)

    def stage_two_batches(workers):
        trainer = ToCoADTrainer(small_config(batch_size=4), weights="random", seed=3,
                                inputs=InputSettings(workers=workers))
        phase = Checkpointing(seed=3).phase("ncl")
        stream = trainer._stream(phase, 2, images, "tocoad/ncl", anomalies=True, with_normals=True)
        return [batch for epoch in phase.epochs(2) for batch in stream.epoch(epoch)]

    alone, two = stage_two_batches(0), stage_two_batches(2)
    assert len(alone) == len(two) == 6  # 2 epochs of 10 images in batches of 4, 4 and 2
    for a, b in zip(alone, two):
        assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b))
    masks = torch.cat([b[2] for b in alone])
    assert masks.any() and not masks.all()


def test_plan_matches_batches_and_resumes_mid_epoch():
    ckpt = Checkpointing(seed=2)
    phase = ckpt.phase("p")
    whole = list(phase.plan(3, 10, 4, min_batch=2))
    by_epoch = [(e, idx) for e in range(3) for idx in ckpt.phase("p").batches(e, 10, 4, min_batch=2)]
    assert [(e, i.tolist()) for e, i in whole] == [(e, i.tolist()) for e, i in by_epoch]
    phase.epoch, phase.step = 1, 2  # as a checkpoint restores it
    resumed = list(phase.plan(3, 10, 4, min_batch=2))
    assert [(e, i.tolist()) for e, i in resumed] == [(e, i.tolist()) for e, i in whole[5:]]


def test_uniad_features_spill_to_a_float16_file_and_still_train(tmp_path):
    from test_uniad import TINY, make_category

    train, _ = make_category(tmp_path, "stripes", seed=2, size=64, n_train=8, n_good=0, n_bad=0)
    test = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    overrides = {**TINY, "image_size": 64, "epochs": 2, "batch_size": 4}

    def trained(inputs, workdir):
        torch.manual_seed(0)
        detector = _detector("uniad", overrides, inputs, workdir)
        detector.fit(make_loader(train, detector.preprocess(), batch_size=4, train=True, seed=0))
        return detector

    spilled = trained(InputSettings(cache_bytes=0), str(tmp_path / "work"))
    assert spilled.record_extras()["feature_cache"]["where"] == "disk"
    assert list((tmp_path / "work").glob("uniad-features*"))
    in_ram = trained(InputSettings(), None)
    assert in_ram.record_extras()["feature_cache"]["where"] == "ram"
    from striped_category import as_batch

    a, b = spilled.predict(as_batch(test)).scores, in_ram.predict(as_batch(test)).scores
    # the same training up to float16 storage of the features (relative rounding ~5e-4)
    assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=2e-2)
    assert not torch.equal(torch.as_tensor(a), torch.as_tensor(b))
