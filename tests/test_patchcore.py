"""PatchCore on generated data with random weights: determinism, beats the mean-image floor,
the options (re-weighting, two-level coreset, other backbone) and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.components.patch_features import PatchAggregator, official_reference
from adbench.config import resolve_config
from adbench.data import Batch, make_loader
from adbench.detector import RunContext
from adbench.errors import ConfigError, WeightsError
from adbench.registry import DATASETS, METHODS

synthetic = pytest.importorskip("adbench.datasets.synthetic")

# Random weights: a random ResNet-18 gives usable local features, a random EfficientNet (depthwise
# convs, untrained batch-norm) does not (synthetic chip: 0.83 vs 0.74 measured, mean_image 0.72), so tests use it.
SMALL = {"image_size": 96, "crop_size": 96, "batch_size": 8, "backbone": "resnet18"}


def make(name="patchcore", profile="quick", weights="random", seed=0, workdir=None, **overrides):
    cls = METHODS.get(name)
    config = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method=name)
    torch.manual_seed(seed)
    return cls(config, RunContext(seed=seed, weights=weights, profile=profile, workdir=workdir))


def run(det, index):
    pre = det.preprocess()
    det.fit(make_loader(index.train, pre, batch_size=det.config.batch_size, train=True, seed=0))
    scores, labels = [], []
    for batch in make_loader(index.test, pre, batch_size=16, train=False):
        s, maps = det.predict(batch).numpy()
        assert maps.shape == (len(batch), pre.output_size, pre.output_size)
        assert np.isfinite(s).all() and np.isfinite(maps).all()
        scores.append(s)
        labels.append(batch.labels.numpy())
    return np.concatenate(scores), np.concatenate(labels)


def auroc(scores, labels):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    root = synthetic.ensure_generated(tmp_path_factory.getbasetemp() / "adbench-synthetic-cache")
    return DATASETS.get("synthetic")(root).index("chip")


def test_aggregator_matches_official_order_of_operations():
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 24, 12, 12, generator=gen), torch.randn(2, 56, 6, 6, generator=gen)]
    ours = PatchAggregator([24, 56], pretrain_dim=128, target_dim=96)(maps)
    assert ours.shape == (2, 96, 12, 12)
    ref = official_reference(maps, pretrain_dim=128, target_dim=96)
    assert torch.allclose(ours.permute(0, 2, 3, 1).reshape(-1, 96), ref, atol=1e-5)


def test_paper_profile_geometry_and_registration():
    cls = METHODS.get("patchcore")
    cfg = resolve_config(cls.Config, cls.PROFILES, "paper", {}, method="patchcore")
    det = make(profile="paper", image_size=64, crop_size=None)
    assert (cfg.backbone, cfg.layers, cfg.coreset_ratio, cfg.image_size, cfg.crop_size) == ("wide_resnet50_2.tv_in1k", (2, 3), 0.1, 256, 224)
    assert det.backbone.strides == [8, 16] and det.weights_info().tag == "random"
    assert det.embed(torch.rand(1, 3, 64, 64)).shape == (1, 1024, 8, 8)


def test_deterministic_and_beats_mean_image(chip, tmp_path):
    first, labels = run(make(workdir=str(tmp_path), **SMALL), chip)
    second, _ = run(make(workdir=str(tmp_path), **SMALL), chip)
    assert np.array_equal(first, second)  # same seed, CPU: identical scores
    assert not any(tmp_path.iterdir())  # spill files are removed after fit
    floor, _ = run(make("mean_image", image_size=96), chip)
    ours, floor_auc = auroc(first, labels), auroc(floor, labels)
    print(f"chip image AUROC: patchcore(random resnet18) {ours:.3f} vs mean_image {floor_auc:.3f}")
    assert ours > 0.7 and ours > floor_auc + 0.05, (ours, floor_auc)


def test_options_reweight_two_level_and_ratio(chip):
    det = make(coreset_ratio=0.01, coreset_mode="two_level", coreset_chunk=2000, reweight=True, **SMALL)
    scores, labels = run(det, chip)
    facts = det.record_extras()
    assert facts["coreset_mode"] == "two_level"
    assert facts["bank_size"] == int(np.ceil(facts["candidates"] * 0.01))
    assert facts["grid"] == [12, 12] and facts["candidates"] == 144 * len(chip.train)
    # the re-weighting factor lies in (0, 1): re-weighted scores never exceed s*
    plain = make(coreset_ratio=0.01, coreset_mode="two_level", coreset_chunk=2000, **SMALL)
    plain_scores, _ = run(plain, chip)
    assert (scores <= plain_scores + 1e-5).all() and (scores > 0).all()
    assert auroc(scores, labels) > 0.6


def test_other_backbone_and_errors(monkeypatch):
    det = make(**{**SMALL, "backbone": "tf_efficientnet_lite0"})  # layers (2, 3) = strides 8, 16
    assert det.backbone.channels == [40, 112] and det.backbone.strides == [8, 16]
    with pytest.raises(ConfigError) as info:
        make(layers=("layer9",), **SMALL)
    assert "\n" not in str(info.value) and "layer9" in str(info.value)
    with pytest.raises(ConfigError):
        make(coreset_ratio=0.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:  # paper profile never falls back to random
        make(profile="paper", weights=None, backbone="resnet18", image_size=64)
    assert "\n" not in str(info.value)
    with pytest.raises(RuntimeError):
        make(**SMALL).predict(Batch(torch.rand(1, 3, 96, 96), torch.zeros(1), [""], ["x"], ["good"]))
