"""UniAD: neighbour mask, jittering, training, detection on a generated category, unified runs.

Everything is small (64-96 px images, a 1+1-layer transformer of width 32-64) so the file
runs in well under a minute on 2 cores; the real-data numbers live in results/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from adbench.methods._uniad_neighbor_transformer import (
    ReconstructionTransformer,
    add_feature_jitter,
    neighbour_mask,
)
from adbench.config import resolve_config
from adbench.data import Preprocess, Sample, make_loader
from adbench.detector import RunContext
from adbench.errors import ConfigError
from adbench.registry import METHODS

TINY = dict(hidden_dim=32, heads=4, encoder_layers=1, decoder_layers=1, ff_dim=64, neighbour_size=3)


def tiny_transformer(**kw) -> ReconstructionTransformer:
    args = dict(dim=16, heads=2, encoder_layers=2, decoder_layers=2, ff_dim=32, neighbour_size=3)
    args.update(kw)
    return ReconstructionTransformer(8, (6, 6), **args)


def make_detector(overrides=None, profile="quick", weights="random", seed=0):
    torch.manual_seed(seed)
    cls = METHODS.get("uniad")
    cfg = resolve_config(cls.Config, cls.PROFILES, profile, {**TINY, **(overrides or {})}, method="uniad")
    return cls(cfg, RunContext(seed=seed, weights=weights, profile=profile))


# --- neighbour-masked attention ------------------------------------------------------------------
def test_neighbour_mask_geometry():
    mask = neighbour_mask(6, 6, 3).view(6, 6, 6, 6)
    assert mask[2, 2].sum() == 9 and mask[2, 2, 1:4, 1:4].all()  # 3x3 window around (2, 2)
    assert mask[0, 0].sum() == 4 and mask[0, 0, :2, :2].all()  # clipped at the corner
    assert not neighbour_mask(6, 6, 0).any()


def test_attention_weights_are_zero_inside_the_window_and_positive_elsewhere():
    torch.manual_seed(0)
    model = tiny_transformer().eval()
    attns = model.attention_modules()
    assert len(attns) == 2 + 2 * 2  # encoder self-attention + two attentions per decoder layer
    for a in attns:
        a.record = True
    model(torch.randn(3, 8, 6, 6))
    blocked = neighbour_mask(6, 6, 3)
    for a in attns:
        w = a.last_weights  # [B, heads, N, N]
        assert w.shape == (3, 2, 36, 36)
        assert torch.all(w[..., blocked] == 0), "a query attended inside its own window"
        assert torch.all(w[..., ~blocked] > 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 36))


def test_without_mask_a_query_attends_to_its_own_position():
    torch.manual_seed(0)
    model = tiny_transformer(neighbour_size=0).eval()
    for a in model.attention_modules():
        a.record = True
    model(torch.randn(2, 8, 6, 6))
    w = model.encoder[0].self_attn.last_weights
    assert torch.all(torch.diagonal(w, dim1=-2, dim2=-1) > 0)


# --- feature jittering ---------------------------------------------------------------------------
def test_jitter_magnitude_follows_the_paper():
    torch.manual_seed(0)
    tokens = torch.randn(4, 500, 272) * 3
    noise = add_feature_jitter(tokens, 20.0) - tokens
    expected = 20.0 * tokens.norm(dim=-1) / 272
    ratio = noise.std(dim=-1) / expected
    assert torch.allclose(ratio.mean(), torch.tensor(1.0), atol=0.02)
    assert torch.equal(add_feature_jitter(tokens, 0.0), tokens)


def test_jitter_is_active_only_in_training_mode():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    model = tiny_transformer(dropout=0.0, jitter_scale=20.0)
    model.eval()
    assert torch.equal(model(x), model(x))  # eval: deterministic, no noise
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, second)  # training: fresh noise each call
    model.jitter_scale = 0.0  # without jitter (and dropout 0) training mode == eval mode
    plain = model(x)
    model.eval()
    torch.testing.assert_close(plain, model(x))


# --- the detector ------------------------------------------------------------------------------
def test_channels_come_from_the_backbone():
    det = make_detector(profile="paper", overrides={"neighbour_size": 7})
    assert det.config.backbone == "tf_efficientnet_b4.aa_in1k"
    assert sum(det.backbone.channels) == 272 and det.grid == (14, 14)  # paper: 272 ch, 14x14
    assert det.model.input_proj.in_features == 272
    quick = make_detector()
    assert quick.config.backbone == "tf_efficientnet_lite0.in1k"
    assert quick.model.input_proj.in_features == 16 + 24 + 40 + 112
    with pytest.raises(ConfigError, match="image_size"):
        make_detector({"image_size": 100})


def _stripes(rng, size, category):
    """A normal image: oriented stripes with a random phase and a little noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * 6 * (xx if category == "stripes" else xx + yy) + phase)
    base = np.array([0.45, 0.5, 0.55]) if category == "stripes" else np.array([0.6, 0.45, 0.35])
    img = base + 0.15 * wave[..., None] + rng.normal(0, 0.02, (size, size, 3))
    return np.clip(img, 0, 1)


def make_category(root: Path, category: str, seed: int, size=112, n_train=24, n_good=10, n_bad=10):
    """A generated category in MVTec layout (kitgen reads it); anomalies are a dark square."""
    rng = np.random.default_rng(seed)
    base = root / category

    def save(arr, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((arr * 255).astype(np.uint8)).save(path)
        return path

    train = [Sample(save(_stripes(rng, size, category), base / "train" / "good" / f"{i:03d}.png"), 0, category, "train")
             for i in range(n_train)]
    test = [Sample(save(_stripes(rng, size, category), base / "test" / "good" / f"{i:03d}.png"), 0, category, "test")
            for i in range(n_good)]
    for i in range(n_bad):
        img = _stripes(rng, size, category)
        s = int(rng.integers(size // 6, size // 4))
        y, x = rng.integers(0, size - s, size=2)
        mask = np.zeros((size, size), bool)
        mask[y : y + s, x : x + s] = True
        img[mask] = [0.1, 0.1, 0.1]
        path = save(img, base / "test" / "blob" / f"{i:03d}.png")
        mask_path = save(mask.astype(np.float64), base / "ground_truth" / "blob" / f"{i:03d}_mask.png")
        test.append(Sample(path, 1, category, "test", "blob", mask_path))
    return train, test


def evaluate(det, test, pre):
    scores, labels = [], []
    for batch in make_loader(test, pre, batch_size=16, train=False):
        pred = det.predict(batch)
        assert pred.maps.shape == batch.masks.shape and torch.isfinite(pred.maps).all()
        scores.append(pred.scores.numpy())
        labels.append(batch.labels.numpy())
    return roc_auc_score(np.concatenate(labels), np.concatenate(scores))


def test_loss_falls_and_detects_a_generated_category(tmp_path, shared_weights):
    det = make_detector({"image_size": 96, "epochs": 10, "batch_size": 8, "lr": 1e-3,
                         "hidden_dim": 64, "ff_dim": 128}, weights=None)
    assert det.weights_info().tag == "tf_efficientnet_lite0.in1k"
    train, test = make_category(tmp_path, "stripes", seed=1, size=96, n_train=16)
    pre = det.preprocess()
    det.fit(make_loader(train, pre, batch_size=8, train=True, seed=0))
    auroc = evaluate(det, test, pre)
    losses = det.loss_history  # mean epoch loss: jitter noise, but a clear downward trend
    assert len(losses) == 10 and losses[-1] < 0.85 * losses[0] and losses[-1] < min(losses[:3]), losses
    assert auroc >= 0.75, auroc


def test_training_is_deterministic_for_a_seed(tmp_path):
    train, _ = make_category(tmp_path, "stripes", seed=2, size=64, n_train=8, n_good=0, n_bad=0)
    runs = []
    for _ in range(2):
        det = make_detector({"image_size": 64, "epochs": 2, "batch_size": 4})
        det.fit(make_loader(train, det.preprocess(), batch_size=4, train=True, seed=0))
        runs.append(det.loss_history)
    assert runs[0] == runs[1]


def test_unified_protocol_trains_one_model_and_reports_each_category(tmp_path, shared_weights):
    """Through the real runner: one job, one fit over both categories, one record per category."""
    from adbench.run.runner import RunOptions, run

    for seed, category in enumerate(("stripes", "diagonal")):
        make_category(tmp_path / "data", category, seed=seed, size=96, n_train=10, n_good=8, n_bad=8)
    sets = {**TINY, "image_size": 96, "epochs": 10, "batch_size": 8, "lr": 1e-3, "hidden_dim": 64, "ff_dim": 128}
    summary = run(RunOptions(
        method="uniad", dataset="kitgen", data_root=str(tmp_path / "data"), profile="quick",
        protocol="unified", set_options=[f"{k}={v}" for k, v in sets.items()],
        plugins=["adbench_testkit"], results=str(tmp_path / "results"),
        weights=str(shared_weights / "tf_efficientnet_lite0.pth"), progress=False,
    ), log=lambda msg: None)
    assert summary.exit_code == 0 and len(summary.plan.jobs) == 1
    records = sorted(summary.records, key=lambda r: r["category"])
    assert [r["category"] for r in records] == ["diagonal", "stripes"]
    for record in records:
        assert record["status"] == "ok" and record["protocol"] == "unified"
        assert sorted(record["record_extras"]["train_categories"]) == ["diagonal", "stripes"]
        assert record["n_train_images"] == 20
        assert record["metrics"]["image_auroc"] >= 0.75 and record["metrics"]["pixel_auroc"] is not None


# --- map smoothing and silent options ----------------------------------------------------------
@pytest.fixture()
def one_thread():
    """One torch thread: on the shared CPU two threads' OpenMP barriers make these tiny
    forward passes ~50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_no_map_blur_by_default_and_blur_option_changes_only_the_map(one_thread):
    """Untrained tiny model: the returned map is the official one (L2 residual of the features,
    bilinearly upsampled, no smoothing); ``blur_sigma`` smooths that map and leaves the image
    scores (computed on the unsmoothed map) unchanged."""
    import torch.nn.functional as F

    from adbench.components.blur import gaussian_blur
    from adbench.data import Batch

    cls = METHODS.get("uniad")
    assert resolve_config(cls.Config, cls.PROFILES, "quick").blur_sigma == 0.0
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = Batch(images, torch.zeros(3, dtype=torch.long), [""] * 3, ["x"] * 3, ["good"] * 3)
    plain = make_detector({"image_size": 64})
    blurred = make_detector({"image_size": 64, "blur_sigma": 4.0})
    pred = plain.predict(batch)  # puts the model in eval mode (no jitter, no dropout)
    with torch.no_grad():
        feats = plain.features(images)
        residual = torch.sqrt(((plain.model(feats) - feats) ** 2).sum(dim=1, keepdim=True))
        raw = F.interpolate(residual, size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    assert torch.equal(pred.maps, raw)
    other = blurred.predict(batch)
    assert torch.equal(other.maps, gaussian_blur(raw, 4.0)) and not torch.allclose(other.maps, raw)
    assert torch.equal(other.scores, pred.scores)


def test_inert_or_invalid_options_are_errors_naming_the_option():
    cls = METHODS.get("uniad")

    def resolve(**overrides):
        return resolve_config(cls.Config, cls.PROFILES, "paper", overrides, method="uniad")

    resolve(epochs=100)  # the default step (400) then never fires: fine, nothing was asked
    resolve(epochs=1000, lr_step_epoch=800)  # the official schedule
    cases = [
        (dict(epochs=100, lr_gamma=0.5), "--set lr_gamma=0.5 has no effect: training ends (epochs=100)"),
        (dict(epochs=10, lr_step_epoch=10), "--set lr_step_epoch=10 has no effect"),
        (dict(lr_gamma=1, lr_step_epoch=300), "--set lr_step_epoch=300 has no effect: lr_gamma=1"),
        (dict(lr_step_epoch=0), "--set lr_step_epoch=0: must be >= 1"),
        (dict(blur_sigma=-2), "--set blur_sigma=-2.0: must be >= 0"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            resolve(**overrides)
        assert len(info.value.problems) == 1 and message in info.value.problems[0], info.value.problems
    for profile in cls.PROFILES:  # no profile sets an inert option
        resolve_config(cls.Config, cls.PROFILES, profile)
