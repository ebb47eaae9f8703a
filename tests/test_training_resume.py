"""Checkpoints inside a job (issue 15): a resumed job equals an uninterrupted one, only the
remaining steps run, and checkpoints that do not belong are not used.

Each method is trained three ways from the same seeds (``resume_kit.train_three_ways``): whole;
killed right after a step that falls mid-epoch; resumed from that checkpoint. On CPU, with the
same seed and threads, the resumed model's scores and maps equal the uninterrupted one's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.config import resolve_config
from adbench.detector import RunContext
from adbench.data.input_settings import InputSettings
from adbench.registry import METHODS
from adbench.run.worker import seed_everything
from resume_kit import train_three_ways
from test_draem import as_batches, stripes_category
from adbench_testkit import stripes_with_blobs
from test_anomalydino import batches as named_batches
from test_dinomaly import make_dinomaly


def _same_predictions(a, b, test_images):
    pa, pb = a.predict(as_batches(test_images, 64)[0]), b.predict(as_batches(test_images, 64)[0])
    assert torch.equal(torch.as_tensor(pa.scores), torch.as_tensor(pb.scores))
    if pa.maps is not None:
        assert torch.equal(torch.as_tensor(pa.maps), torch.as_tensor(pb.maps))


@pytest.mark.parametrize("workers", [0, 2])  # anomalies drawn in DataLoader workers (adbench.data input pipeline)
def test_draem_resumed_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch, workers):
    torch.set_num_threads(1)
    train, test, _, _ = stripes_category(n_train=6, n_test=4, size=32)
    cls = METHODS.get("draem")
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick",
                         {"image_size": 32, "recon_width": 4, "disc_width": 4, "epochs": 3, "batch_size": 2,
                          "max_steps": None, "score_filter": 5})

    def build(ckpt):
        return cls(cfg, RunContext(seed=0, checkpoints=ckpt, inputs=InputSettings(workers=workers)))

    whole, resumed, ckpt = train_three_ways(build, as_batches(train, 4), tmp_path, kill_at=4, monkeypatch=monkeypatch)
    assert ckpt.resumed is not None and (ckpt.resumed.epoch, ckpt.resumed.step) == (1, 1)  # mid-epoch
    assert ckpt.steps_this_attempt == 9 - 4  # 3 epochs x 3 steps, 4 done before the kill
    assert resumed.loss_history == whole.loss_history
    _same_predictions(whole, resumed, test)


def test_fastflow_resumed_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch):
    from striped_category import as_batch, make_category

    torch.set_num_threads(1)
    train, test, _ = make_category(n_train=12, n_good=2, n_bad=2)
    cls = METHODS.get("fastflow")
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick",
                         {"backbone": "resnet18.tv_in1k", "epochs": 3, "batch_size": 4, "flow_steps": 2,
                          "image_size": 64})

    def build(ckpt):
        return cls(cfg, RunContext(seed=0, weights="random", checkpoints=ckpt))

    whole, resumed, ckpt = train_three_ways(build, train, tmp_path, kill_at=5, monkeypatch=monkeypatch)
    assert (ckpt.resumed.epoch, ckpt.resumed.step, ckpt.steps_this_attempt) == (1, 2, 9 - 5)
    assert resumed.loss_history == whole.loss_history
    pa, pb = whole.predict(as_batch(test)), resumed.predict(as_batch(test))
    assert torch.equal(pa.scores, pb.scores) and torch.equal(pa.maps, pb.maps)


def test_dinomaly_resumed_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    train, test, _, _ = stripes_with_blobs(rng, 6, 4, size=56)
    data = named_batches(torch.from_numpy(np.stack(train)), "stripes", size=3)

    def build(ckpt):
        return make_dinomaly(checkpoints=ckpt, image_size=56, crop_size=None, iterations=5, batch_size=2, warmup_iterations=2)

    whole, resumed, ckpt = train_three_ways(build, data, tmp_path, kill_at=4, monkeypatch=monkeypatch)
    # 3 steps per epoch (6 images, batch 2): 2 epochs, stopped after the 5th iteration
    assert (ckpt.resumed.epoch, ckpt.resumed.step, ckpt.steps_this_attempt) == (1, 1, 5 - 4)
    assert resumed.loss_history == whole.loss_history and len(whole.loss_history) == 2
    test_batch = named_batches(torch.from_numpy(np.stack(test)), "stripes", size=4)[0]
    pa, pb = whole.predict(test_batch), resumed.predict(test_batch)
    assert torch.equal(pa.scores, pb.scores) and torch.equal(pa.maps, pb.maps)


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_loader_path_resumes_in_the_same_order(tmp_path, monkeypatch, workers):
    """Reverse Distillation's paper path runs the teacher every epoch (no feature cache), on
    images decoded once and handed over by DataLoader workers: a resumed epoch re-reads the
    same order from the first step not done."""
    from striped_category import as_batch, make_category

    torch.set_num_threads(1)
    train, test, _ = make_category(n_train=12, n_good=2, n_bad=2)
    images = torch.cat([b.images for b in train])
    loader = torch.utils.data.DataLoader(_Images(images), batch_size=4, collate_fn=lambda xs: as_batch(torch.stack(xs)))
    cls = METHODS.get("reverse_distillation")
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick",
                         {"backbone": "resnet18.tv_in1k", "epochs": 2, "batch_size": 4, "image_size": 64,
                          "cache_features": False})

    def build(ckpt):
        return cls(cfg, RunContext(seed=0, weights="random", checkpoints=ckpt, inputs=InputSettings(workers=workers)))

    whole, resumed, ckpt = train_three_ways(build, loader, tmp_path, kill_at=4, monkeypatch=monkeypatch)
    assert (ckpt.resumed.epoch, ckpt.resumed.step, ckpt.steps_this_attempt) == (1, 1, 6 - 4)
    assert resumed.loss_history == whole.loss_history
    pa, pb = whole.predict(as_batch(test)), resumed.predict(as_batch(test))
    assert torch.equal(pa.scores, pb.scores) and torch.equal(pa.maps, pb.maps)


@pytest.mark.parametrize("workers", [0, 2])
def test_tocoad_resumed_mid_stage_two_equals_uninterrupted(tmp_path, monkeypatch, workers):
    """Killed mid-epoch in stage II (stage I done): the resumed job skips stage I, continues
    stage II at the saved step, builds the same bank and scores the same; anomalies drawn in
    the job's process or in 2 workers alike."""
    from adbench.methods.tocoad import ToCoAD
    from test_tocoad import batches, normal_images, small_config

    torch.set_num_threads(1)
    images = normal_images(12, seed=1)
    cfg = small_config(dnp_epochs=2, ncl_epochs=2, batch_size=4, coreset_ratio=0.5)

    def build(ckpt):
        return ToCoAD(cfg, RunContext(seed=0, weights="random", checkpoints=ckpt, inputs=InputSettings(workers=workers)))

    # stage I: 2 epochs x 3 steps; stage II: 2 x 3; kill after step 6 + 4 (stage II, epoch 1, step 1)
    whole, resumed, ckpt = train_three_ways(build, batches(images, 4), tmp_path, kill_at=10, monkeypatch=monkeypatch)
    assert (ckpt.resumed.phase, ckpt.resumed.epoch, ckpt.resumed.step) == ("ncl", 1, 1)
    assert ckpt.steps_this_attempt == 12 - 10
    assert resumed.trainer.history["dnp_loss"] == whole.trainer.history["dnp_loss"]
    assert resumed.trainer.history["ncl_loss"] == whole.trainer.history["ncl_loss"]
    assert resumed.trainer.history["ncl_sym"] == whole.trainer.history["ncl_sym"]
    assert torch.equal(resumed.bank, whole.bank)
    test = batches(normal_images(4, seed=7), 4)[0]
    pa, pb = whole.predict(test), resumed.predict(test)
    assert torch.equal(pa.scores, pb.scores) and torch.equal(pa.maps, pb.maps)


def test_final_checkpoint_scores_without_any_backbone_pass_over_training_images(tmp_path, monkeypatch):
    """A job killed while scoring: its final checkpoint holds the trained F and the memory bank,
    so the rerun embeds no training image (PatchCore and ToCoAD), and scores the same."""
    from adbench.methods.patchcore import PatchCore, PatchCoreConfig
    from adbench.methods.tocoad import ToCoAD
    from resume_kit import checkpointing
    from test_tocoad import batches, normal_images, small_config

    torch.set_num_threads(1)
    train, test = batches(normal_images(8, seed=1), 4), batches(normal_images(4, seed=7), 4)[0]
    builds = {
        "patchcore": lambda ck: PatchCore(PatchCoreConfig(backbone="resnet18", image_size=64, crop_size=None,
                                                          pretrain_embed_dim=64, target_embed_dim=64),
                                          RunContext(seed=0, weights="random", checkpoints=ck)),
        "tocoad": lambda ck: ToCoAD(small_config(), RunContext(seed=0, weights="random", checkpoints=ck)),
    }
    for name, build in builds.items():
        path = tmp_path / f"{name}.ckpt"
        seed_everything(0, torch.device("cpu"))  # as the worker does before building a detector
        first = build(checkpointing(path, 0, every=1e9))
        first.fit(train)
        expected = first.predict(test)
        seed_everything(0, torch.device("cpu"))
        again = build(checkpointing(path, 0, every=1e9))
        passes = {"n": 0}
        extractor = again.backbone
        real_forward = type(extractor).forward

        def counting(self, images, real_forward=real_forward):
            passes["n"] += len(images)
            return real_forward(self, images)

        monkeypatch.setattr(type(extractor), "forward", counting)
        again.fit(train)
        assert passes["n"] == 0, f"{name}: {passes['n']} training images embedded again"
        assert again.context.checkpoints.resumed.final
        got = again.predict(test)
        monkeypatch.undo()
        assert torch.equal(expected.scores, got.scores) and torch.equal(expected.maps, got.maps), name


# --- checkpoints that do not belong, are damaged, or cannot be written --------------------------
def _draem_setup():
    train, _, _, _ = stripes_category(n_train=4, n_test=2, size=32)
    cls = METHODS.get("draem")
    cfg = resolve_config(cls.Config, cls.PROFILES, "quick",
                         {"image_size": 32, "recon_width": 4, "disc_width": 4, "epochs": 2, "batch_size": 2,
                          "max_steps": None, "score_filter": 5})
    return cls, cfg, as_batches(train, 4)


def _file(path, identity=None, version=1):
    from adbench.training.checkpoints import CheckpointFile

    lines = []
    return CheckpointFile(path, identity or {"test": "resume", "seed": 0}, version, warn=lines.append), lines


def _fit(cls, cfg, data, file):
    from adbench.training import Checkpointing

    ckpt = Checkpointing(file=file, every_seconds=1e-9, seed=0)
    cls(cfg, RunContext(seed=0, checkpoints=ckpt)).fit(data)
    return ckpt


def test_checkpoint_of_another_job_or_version_is_not_used(tmp_path):
    cls, cfg, data = _draem_setup()
    path = tmp_path / "job.ckpt"
    _fit(cls, cfg, data, _file(path)[0])
    for identity, version, why in (({"test": "resume", "seed": 1}, 1, "it belongs to another job (seed 0, this job 1)"),
                                   (None, 2, "written by version 1 of the method's training code, this is version 2")):
        file, lines = _file(path, identity, version)
        ckpt = _fit(cls, cfg, data, file)
        assert ckpt.resumed is None and ckpt.steps_this_attempt == 4
        assert lines == [f"note: checkpoint {path} is not used: {why}; the job starts over"]


def test_corrupt_or_truncated_checkpoint_warns_and_starts_over(tmp_path):
    cls, cfg, data = _draem_setup()
    path = tmp_path / "job.ckpt"
    _fit(cls, cfg, data, _file(path)[0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    file, lines = _file(path)
    ckpt = _fit(cls, cfg, data, file)
    assert ckpt.resumed is None and ckpt.steps_this_attempt == 4
    assert len(lines) == 1 and lines[0].startswith(f"warning: checkpoint {path} is unreadable (")
    assert lines[0].endswith("; the job starts over")


def test_kill_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path, monkeypatch):
    """The writer dies inside torch.save: the last complete checkpoint stays usable."""
    from adbench.training import checkpoints as ck
    from adbench.training.checkpoints import read_header

    cls, cfg, data = _draem_setup()
    path = tmp_path / "job.ckpt"
    real = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint: half written, then the process is gone
            f.write(b"\x80\x02partial")
            raise SystemExit("killed")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", dying_save)
    try:
        _fit(cls, cfg, data, _file(path)[0])
    except SystemExit:
        pass
    monkeypatch.setattr(ck.torch, "save", real)
    assert read_header(path).step == 2 and not list(tmp_path.glob(".*.tmp"))
    file, lines = _file(path)
    ckpt = _fit(cls, cfg, data, file)
    assert ckpt.resumed is not None and ckpt.resumed.step == 2 and ckpt.steps_this_attempt == 2 and not lines


def test_a_checkpoint_that_cannot_be_written_never_fails_the_job(tmp_path, monkeypatch):
    import errno

    from adbench.training import checkpoints as ck

    cls, cfg, data = _draem_setup()

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_atomic_torch_save", full)
    file, lines = _file(tmp_path / "job.ckpt")
    ckpt = _fit(cls, cfg, data, file)
    assert ckpt.steps_this_attempt == 4 and not ckpt.enabled
    assert lines == [f"warning: no checkpoints for this job: cannot write {tmp_path / 'job.ckpt'} "
                     f"(No space left on device); training goes on without them"]


def test_a_nan_loss_stops_the_job_at_once_naming_where():
    import pytest

    from adbench.training import Checkpointing, TrainingDiverged

    phase = Checkpointing(seed=0).phase("train")
    seen = []
    with pytest.raises(TrainingDiverged) as info:
        for epoch in phase.epochs(5):
            for _ in phase.batches(epoch, 6, 2):
                bad = (epoch, phase.step) == (1, 1)
                seen.append((epoch, phase.step))
                phase.step_done(torch.tensor(float("nan") if bad else 0.5), 2)
            phase.epoch_done()
    assert str(info.value) == ("training loss became NaN or infinite in phase train, epoch 1, step 1 "
                               "(steps counted from 0 in each epoch)")
    assert seen[-1] == (1, 1)  # not one step more
