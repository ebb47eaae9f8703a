"""PatchCore on generated data with random weights: determinism, beats the mean-image floor,
the options (re-weighting, two-level coreset, other backbone) and one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.methods._patchcore_features import PatchAggregator, official_reference
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
        make(profile="paper", weights=None, backbone="resnet18", image_size=64, crop_size=None)
    assert "\n" not in str(info.value)
    with pytest.raises(RuntimeError):
        make(**SMALL).predict(Batch(torch.rand(1, 3, 96, 96), torch.zeros(1), [""], ["x"], ["good"]))


# --- issue 13: the ``miad`` profile (MIAD appendix A.2.2 + anomalib v0.3.7) and its switches ---
TINY = {"image_size": 32, "crop_size": None, "batch_size": 2, "backbone": "resnet18"}


def test_miad_profile_follows_the_appendix_and_anomalib_037():
    cls = METHODS.get("patchcore")
    cfg = resolve_config(cls.Config, cls.PROFILES, "miad", {}, method="patchcore")
    # appendix A.2.2: 224 px resize, no crop, WideResNet50, batch 32, 2,000 random training images
    assert (cfg.image_size, cfg.crop_size, cfg.batch_size, cfg.max_train_images) == (224, None, 32, 2000)
    # anomalib v0.3.7 (timm 0.5.4's bare wide_resnet50_2 = racm) defaults
    assert (cfg.backbone, tuple(cfg.layers), cfg.patch_size) == ("wide_resnet50_2.racm_in1k", (2, 3), 3)
    assert (cfg.aggregation, cfg.feature_upsample, cfg.pool_count_include_pad) == ("anomalib", "nearest", False)
    assert (cfg.coreset_ratio, cfg.num_neighbors, cfg.reweight, cfg.reweight_b, cfg.reweight_rule) == (0.1, 1, True, 9, "paper")
    assert (cfg.map_upsample, cfg.map_sigma) == ("nearest", 4.0)
    # WRN50 channel counts (random weights, 64 px): 512 + 1024 = 1536 dims on the layer-2 grid,
    # the layer-2 part is the 3x3 average pool (padding not counted), layer 3 is repeated 2x2
    det = make(profile="miad", image_size=64)
    x = torch.rand(1, 3, 64, 64)
    emb = det.embed(x)
    assert emb.shape == (1, 1536, 8, 8) and det.aggregator.dim == 1536
    f2, f3 = det.backbone(x)
    assert torch.allclose(emb[:, :512], torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)(f2), atol=1e-5)
    deep = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)(f3)  # [1, 1024, 4, 4]
    assert torch.allclose(emb[:, 512:], deep.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3), atol=1e-5)
    # anomalib's blur: sigma 4, kernel 33 (2 * int(4 * 4 + 0.5) + 1); ours spans the same 33 px
    from adbench.components.blur import gaussian_blur

    delta = torch.zeros(1, 64, 64)
    delta[0, 32, 32] = 1.0
    assert int((gaussian_blur(delta, cfg.map_sigma)[0, 32] > 0).sum()) == 33


def test_aggregation_switches_change_only_what_they_should():
    from adbench.methods._patchcore_features import AnomalibAggregator

    gen = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, 6, 8, 8, generator=gen), torch.randn(2, 10, 4, 4, generator=gen)]
    near = AnomalibAggregator([6, 10], upsample="nearest")(maps)
    assert near.shape == (2, 16, 8, 8)
    cell = near[:, 6:].unfold(2, 2, 2).unfold(3, 2, 2)  # [2, 10, 4, 4, 2, 2]: each 2x2 cell constant
    assert torch.equal(cell, cell[..., :1, :1].expand_as(cell))
    bil = AnomalibAggregator([6, 10], upsample="bilinear")(maps)
    assert torch.equal(bil[:, :6], near[:, :6]) and not torch.allclose(bil[:, 6:], near[:, 6:])
    # count_include_pad: the border ring differs, the interior is the same
    incl = AnomalibAggregator([6, 10], upsample="nearest", count_include_pad=True)(maps)
    assert torch.allclose(incl[..., 2:-2, 2:-2], near[..., 2:-2, 2:-2], atol=1e-6)
    assert not torch.allclose(incl[..., 0, :], near[..., 0, :])
    # official aggregator: nearest upsampling matches the official order of operations with
    # nearest, and leaves the finest layer's contribution untouched
    small = [maps[0], maps[1]]
    ours = PatchAggregator([6, 10], pretrain_dim=32, target_dim=24, upsample="nearest")(small)
    ref = official_reference(small, pretrain_dim=32, target_dim=24, upsample="nearest")
    assert torch.allclose(ours.permute(0, 2, 3, 1).reshape(-1, 24), ref, atol=1e-5)
    no_deep = [maps[0], torch.zeros_like(maps[1])]
    a = PatchAggregator([6, 10], pretrain_dim=32, target_dim=24, upsample="nearest")(no_deep)
    b = PatchAggregator([6, 10], pretrain_dim=32, target_dim=24, upsample="bilinear")(no_deep)
    assert torch.equal(a, b)


def _bare_patchcore(bank, **overrides):
    """A PatchCore with a hand-made memory bank and no backbone (scoring helpers only)."""
    from adbench.components.knn import NearestNeighbours

    cls = METHODS.get("patchcore")
    det = cls.__new__(cls)
    det.config = resolve_config(cls.Config, cls.PROFILES, "paper", overrides, method="patchcore")
    det.bank = torch.tensor(bank, dtype=torch.float32)
    det.knn = NearestNeighbours(det.bank)
    return det


def test_reweighting_by_hand():
    import math

    det = _bare_patchcore([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], reweight=True, reweight_b=3)
    # image 0: its most anomalous patch q = (0, 0.5): m* = (0, 0), N_3(m*) = {m*, (1, 0), (0, 2)}
    # image 1: q = (5, 4): m* = (5, 5), N_3(m*) = {m*, (0, 2), (1, 0)} (5.83, 6.40 from m*)
    queries = torch.tensor([[[9.0, 9.0], [0.0, 0.5]], [[5.0, 4.0], [9.0, 9.0]]])
    where, nearest = torch.tensor([1, 0]), torch.tensor([[3, 0], [3, 3]])
    s_star = torch.tensor([0.5, 1.0])
    d0 = [0.5, math.sqrt(1.25), 1.5]
    d1 = [1.0, math.hypot(4, 4), math.hypot(5, 2)]
    eq7 = lambda d, s: (1 - math.exp(d[0]) / sum(math.exp(v) for v in d)) * s
    got = det._reweight(queries, where, nearest, s_star)
    assert got.tolist() == pytest.approx([eq7(d0, 0.5), eq7(d1, 1.0)], rel=1e-5)  # per image: batch 2 is fine
    alone = det._reweight(queries[1:], where[1:], nearest[1:], s_star[1:])
    assert float(alone[0]) == pytest.approx(float(got[1]), rel=1e-6)
    # anomalib v0.3.0-v0.3.6: the patch's own 3 nearest distances, weight 1 - max softmax
    det.config.reweight_rule = "anomalib_030"
    adhoc = lambda d, s: (1 - math.exp(max(d)) / sum(math.exp(v) for v in d)) * s
    own1 = [1.0, math.hypot(5, 2), math.hypot(4, 4)]  # q = (5, 4) to (5, 5), (0, 2), (1, 0)
    got = det._reweight(queries, where, nearest, s_star)
    assert got.tolist() == pytest.approx([adhoc(d0, 0.5), adhoc(own1, 1.0)], rel=1e-5)


def _png_samples(folder, n, size=32):
    from PIL import Image

    from adbench.data import Sample

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        out.append(Sample(path=path, label=0, category="tiny", split="train"))
    return out


class _CountingBackbone(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x):
        self.images += int(x.shape[0])
        return self.inner(x)


def _counting(seed=0, **overrides):
    det = make(seed=seed, coreset_mode="none", **{**TINY, **overrides})
    det.backbone = _CountingBackbone(det.backbone)
    return det


def _refit(det, train, limit):
    """Fit ``det`` again with ``max_train_images=limit``; returns how many images it embedded."""
    det.config.max_train_images = limit
    det.backbone.images = 0
    det.fit(train)
    return det.backbone.images


def test_train_subsample_embeds_only_the_drawn_images(tmp_path):
    from adbench.methods.patchcore import draw_subsample, relative_names

    samples = _png_samples(tmp_path / "train" / "good", 5)
    det = _counting(max_train_images=3)
    loader = make_loader(samples, det.preprocess(), batch_size=2, train=True, seed=0)
    assert _refit(det, loader, 3) == 3
    facts = det.record_extras()
    assert facts["candidates"] == 3 * 16  # 4x4 grid at 32 px: only the 3 drawn images
    assert (facts["train_images_available"], facts["train_images_used"]) == (5, 3)
    names = facts["train_subsample"]
    paths = [str(s.path) for s in samples]
    assert names == relative_names([paths[i] for i in draw_subsample(paths, 3, seed=0)])
    assert len(set(names)) == 3 and all(n.endswith(".png") and "/" not in n for n in names)
    # reproducible from the job seed, whatever order the paths come in; another seed, another draw
    assert draw_subsample(paths[::-1], 3, 0) == [4 - i for i in draw_subsample(paths, 3, 0)]
    assert len({tuple(draw_subsample(paths, 3, s)) for s in range(4)}) > 1
    # any iterable of batches (not the harness's loader): the same draw, the same 3 images embedded
    batches = list(make_loader(samples, det.preprocess(), batch_size=2, train=True, seed=7))
    assert _refit(det, batches, 3) == 3 and det.record_extras()["train_subsample"] == names
    # a limit at or above the set size changes nothing but the record
    fresh = lambda: make_loader(samples, det.preprocess(), batch_size=2, train=True, seed=0)
    assert _refit(det, fresh(), None) == 5
    full = det.bank.clone()
    assert "train_subsample" not in det.record_extras()
    assert _refit(det, fresh(), 5) == 5 and torch.equal(full, det.bank)
    assert det.record_extras()["train_subsample"].startswith("all 5 training images")


def test_map_upsample_and_reweight_rule_change_only_maps_or_scores(tmp_path):
    samples = _png_samples(tmp_path / "imgs", 4)
    det = make(coreset_mode="none", reweight=True, **TINY)
    det.fit(make_loader(samples, det.preprocess(), batch_size=2, train=True))
    test = next(iter(make_loader(samples[:2], det.preprocess(), batch_size=2, train=False)))
    base = det.predict(test)
    det.config.map_upsample = "nearest"
    near = det.predict(test)
    assert torch.equal(base.scores, near.scores) and not torch.allclose(base.maps, near.maps)
    det.config.reweight_rule = "anomalib_030"
    adhoc = det.predict(test)
    assert torch.equal(adhoc.maps, near.maps) and not torch.allclose(adhoc.scores, near.scores)


@pytest.mark.parametrize(
    "overrides, option",
    [
        ({"reweight_b": 5}, "reweight_b"),
        ({"reweight_rule": "anomalib_030"}, "reweight_rule"),
        ({"coreset_mode": "none", "coreset_starts": 3}, "coreset_starts"),
        ({"coreset_mode": "none", "coreset_ratio": 0.2}, "coreset_ratio"),
        ({"coreset_ratio": 1.0, "coreset_proj_dim": 64}, "coreset_proj_dim"),
        ({"coreset_mode": "flat", "coreset_chunk": 10}, "coreset_chunk"),
        ({"coreset_mode": "two_level", "coreset_flat_max": 10}, "coreset_flat_max"),
        ({"coreset_proj_dim": 0, "coreset_true_distance": True}, "coreset_true_distance"),  # paper default: false
        ({"coreset_proj_dim": 1024, "coreset_true_distance": True}, "coreset_true_distance"),
        ({"aggregation": "anomalib", "target_embed_dim": 512}, "target_embed_dim"),
        ({"pool_count_include_pad": True}, "pool_count_include_pad"),
    ],
)
def test_options_without_effect_are_one_line_errors(overrides, option):
    """Caught when the config is resolved (exit 2 before any job), naming the option."""
    cls = METHODS.get("patchcore")
    with pytest.raises(ConfigError) as info:
        resolve_config(cls.Config, cls.PROFILES, "quick", overrides, method="patchcore")
    text = str(info.value)
    assert "\n" not in text and f"{option}=" in text and "no effect" in text


def test_options_with_effect_are_accepted():
    cls = METHODS.get("patchcore")
    for overrides in ({"reweight": True, "reweight_b": 5, "reweight_rule": "anomalib_030"},
                      {"coreset_mode": "two_level", "coreset_chunk": 10, "coreset_proj_dim": 0},
                      {"aggregation": "anomalib", "pool_count_include_pad": True, "coreset_proj_dim": 64,
                       "coreset_true_distance": False}):
        resolve_config(cls.Config, cls.PROFILES, "quick", overrides, method="patchcore")
    for profile in cls.PROFILES:
        resolve_config(cls.Config, cls.PROFILES, profile, {}, method="patchcore")
    tocoad = METHODS.get("tocoad")  # PatchCore's subclass: its per-patch rule reads reweight_b
    resolve_config(tocoad.Config, tocoad.PROFILES, "quick", {"reweight_b": 5}, method="tocoad")

