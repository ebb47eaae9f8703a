"""AnomalyDINO (issue 26): DINOv2's position-embedding rule, detection on generated data with a
fully random ViT-S/14, the score and distance arithmetic, the masking table, one-shot fitting."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adbench_testkit import stripes_with_blobs
from adbench.components.dinov2 import DinoV2, interpolate_pos_encoding
from adbench.components.knn import NearestNeighbours
from adbench.config import resolve_config
from adbench.data import Batch, Preprocess
from adbench.detector import RunContext
from adbench.errors import ConfigError, FewShotError, WeightsError
from adbench.methods._anomalydino_preprocessing import ANGLES, category_policy, mask_from_component
from adbench.methods.anomalydino import AnomalyDINO, anomaly_map, mean_top_fraction
from adbench.registry import METHODS

TAG = "vit_small_patch14_dinov2.lvd142m"


def make(profile="quick", weights="random", **overrides) -> AnomalyDINO:
    cls = METHODS.get("anomalydino")
    config = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method="anomalydino")
    return cls(config, RunContext(seed=0, weights=weights, profile=profile))


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random: LayerScale and LayerNorm gains ~ N(1, 0.1) (timm's LayerScale
    starts at 1e-5, which would switch the blocks off), everything else ~ N(0, 0.02)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            gain = name.endswith("gamma") or (p.ndim == 1 and "norm" in name and name.endswith("weight"))
            p.copy_((1.0 if gain else 0.0) + (0.1 if gain else 0.02) * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def random_state():
    det = make(image_size=112)
    randomise(det.backbone.model)
    return det.backbone.model.state_dict()


def detector(random_state, **overrides) -> AnomalyDINO:
    det = make(**overrides)
    det.backbone.model.load_state_dict(random_state)
    return det


def batches(images: torch.Tensor, category: str, size: int = 8) -> list[Batch]:
    return [Batch(images=images[i : i + size], labels=torch.zeros(len(images[i : i + size]), dtype=torch.long),
                  paths=[""] * len(images[i : i + size]), categories=[category] * len(images[i : i + size]),
                  defect_types=["good"] * len(images[i : i + size])) for i in range(0, len(images), size)]


def auroc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels).reshape(-1), np.asarray(scores).reshape(-1)))


# --- (a) position embeddings: DINOv2's rule, not timm's ----------------------------------------
def test_position_embeddings_follow_dinov2_not_timm():
    from timm.layers import resample_abs_pos_embed

    net = DinoV2(TAG, weights="random")
    with torch.no_grad():
        net.model.pos_embed.normal_(0, 0.2)
    patch_pos = net.model.pos_embed[:, 1:]
    for grid in [(16, 12), (32, 48), (8, 8)]:
        ours = net.patch_position_embeddings(grid)
        square = patch_pos.float().reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
        expected = F.interpolate(square, scale_factor=((grid[0] + 0.1) / 37, (grid[1] + 0.1) / 37),
                                 mode="bicubic", antialias=False)
        expected = expected.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        assert torch.equal(ours, expected)
        timm_default = resample_abs_pos_embed(patch_pos, list(grid), num_prefix_tokens=0)
        assert (ours - timm_default).abs().max() > 1e-3, grid
    assert torch.equal(net.patch_position_embeddings((37, 37)), patch_pos)  # 518 px: used unchanged
    assert torch.equal(interpolate_pos_encoding(patch_pos, (5, 7), offset=0.0),  # offset 0: size=
                       F.interpolate(patch_pos.reshape(1, 37, 37, -1).permute(0, 3, 1, 2), size=(5, 7),
                                     mode="bicubic").permute(0, 2, 3, 1).reshape(1, 35, -1))


def test_patch_tokens_are_timms_final_normed_tokens_at_518(random_state):
    """At the checkpoint size no resize happens, so the tokens must equal timm's own forward:
    last block, final norm, class token dropped; the top-left crop drops the extra pixels."""
    net = DinoV2(TAG, weights="random")
    net.model.load_state_dict(random_state)
    images = torch.rand(1, 3, 520, 525)
    tokens, grid = net.patch_tokens(images)
    assert grid == (37, 37) and tokens.shape == (1, 37 * 37, 384)
    with torch.no_grad():
        expected = net.model.forward_features(((images - net.mean) / net.std)[..., :518, :518])[:, 1:]
    assert torch.allclose(tokens, expected, atol=1e-5)
    assert torch.equal(net.embed(torch.zeros(2, 3, 28, 42))[:, :1],
                       (net.model.cls_token + net.model.pos_embed[:, :1]).expand(2, -1, -1))


# --- (b) it detects with a fully random ViT-S/14 --------------------------------------------------
def test_detects_blobs_on_stripes_with_random_weights(random_state):
    det = detector(random_state, image_size=112, preprocessing="agnostic")
    rng = np.random.default_rng(0)
    train, test, labels, masks = stripes_with_blobs(rng, 6, 20, size=112)
    det.fit(batches(torch.from_numpy(np.stack(train)), "stripes"))
    facts = det.record_extras()
    assert facts["bank_size"] == 6 * len(ANGLES) * 8 * 8  # 8 rotations, an 8x8 grid, nothing masked
    assert facts["rotation_source"] == "input images" and facts["category_policy"]["stripes"]["table"] == "default"
    pred = det.predict(batches(torch.from_numpy(np.stack(test)), "stripes", size=32)[0])
    scores, maps = pred.numpy()
    assert maps.shape == (20, 112, 112) and np.isfinite(maps).all()
    image, pixel = auroc(scores, labels), auroc(maps, np.stack(masks))
    print(f"stripes, random ViT-S/14 at 112 px: image AUROC {image:.3f}, pixel AUROC {pixel:.3f}")
    assert image >= 0.7 and pixel >= 0.7, (image, pixel)


# --- (c) the arithmetic: 1 - cos to the nearest entry, mean of the top 1 % -------------------------
def test_distance_is_one_minus_cosine_and_score_is_top_one_percent(random_state):
    det = detector(random_state, image_size=112)
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(50, 16, generator=g)
    det.knn = NearestNeighbours(F.normalize(bank, dim=1))
    feats = 3 * torch.randn(2, 200, 16, generator=g)  # un-normalised: the method normalises
    dists = det.patch_distances(feats, (10, 20), ["bottle", "stripes"])
    cos = F.normalize(feats, dim=-1) @ F.normalize(bank, dim=1).T
    expected = 1 - cos.max(dim=-1).values.double()
    assert np.allclose(dists, expected.numpy(), atol=1e-6)
    # mean of the int(1 %) largest of the full grid (masked zeros count), the max below 100 patches
    grid = np.arange(1024, dtype=np.float64)[None] / 1024
    assert mean_top_fraction(grid)[0] == pytest.approx(np.mean(np.arange(1014, 1024) / 1024))
    assert mean_top_fraction(np.array([[0.0, 0.3, 0.2]]))[0] == 0.3
    assert mean_top_fraction(np.pad(grid, ((0, 0), (0, 476))))[0] == pytest.approx(np.mean(np.arange(1009, 1024) / 1024))
    # map: bilinear resize of the grid, then a Gaussian (a constant grid stays constant)
    assert np.allclose(anomaly_map(np.full((4, 4), 0.25), (56, 56), (2.0, 2.0)), 0.25)


# --- (d) masking follows the official table, on test images only ---------------------------------
def test_masking_and_rotation_follow_the_official_tables():
    assert category_policy("capsule", "agnostic") == category_policy("screw", "agnostic")
    assert (category_policy("capsule", "agnostic").masking, category_policy("bottle", "agnostic").masking) == (True, False)
    assert all(category_policy(c, "agnostic").rotation for c in ("bottle", "carpet", "pcb1", "chip"))
    assert [category_policy(c, "informed").rotation for c in ("hazelnut", "screw", "pill", "pcb1")] == [True, True, False, False]
    assert category_policy("pcb3", "masking_only") == category_policy("candle", "informed")
    assert category_policy("pcb3", "masking_only").masking and not category_policy("pcb3", "masking_only").rotation
    assert not category_policy("pill", "agnostic_no_mask").masking and category_policy("pill", "agnostic_no_mask").rotation
    assert category_policy("chip", "agnostic").masking is False  # not in the tables: no mask
    assert category_policy("chip", "force_mask_no_rotation").masking and not category_policy("chip", "force_mask_no_rotation").rotation


def test_foreground_mask_rule():
    grid = (10, 10)
    pc = np.zeros(grid)
    pc[3:7, 3:7] = 20.0  # centre rows/cols 2..7: 16 of 36 kept (44 % > 35 %): no flip
    mask = mask_from_component(pc.reshape(-1), grid).reshape(grid)
    # official: dilation + closing act along the flattened patch order (left/right neighbours)
    expected = np.zeros(grid, bool)
    expected[3:7, 2:8] = True
    assert np.array_equal(mask, expected)
    on_grid = mask_from_component(pc.reshape(-1), grid, morphology="grid").reshape(grid)
    assert on_grid[2:8, 2:8].all() and on_grid.sum() == 36
    # the centre keeps nothing (0 % <= 35 %): the sign is flipped, so -pc > 10 picks the block
    assert np.array_equal(mask_from_component(-pc.reshape(-1), grid).reshape(grid), expected)
    small = np.zeros(grid)
    small[4:6, 4:6] = 20.0  # 4 of 36 (11 %): flipped, and -pc > 10 holds nowhere
    assert not mask_from_component(small.reshape(-1), grid).any()
    assert not mask_from_component(pc.reshape(-1), grid, threshold=25.0).any()


def test_test_images_of_masked_categories_are_masked(random_state):
    det = detector(random_state, image_size=56, preprocessing="masking_only", mask_threshold=1e9)
    images = torch.rand(4, 3, 56, 56)
    det.fit(batches(images[:2], "capsule"))
    assert det.record_extras()["bank_size"] == 2 * 16  # references are never masked by default
    for category, masked in (("capsule", True), ("bottle", False), ("pcb1", True), ("chip", False)):
        pred = det.predict(batches(images[2:], category)[0])
        scores, maps = pred.numpy()
        assert (scores == 0).all() == masked and (maps == 0).all() == masked, category
    assert det.record_extras()["test_patches_kept"] == {"capsule": 0.0, "bottle": 1.0, "pcb1": 0.0, "chip": 1.0}


# --- (e) one shot, geometry, profiles, errors ------------------------------------------------------
def test_one_reference_image_is_enough(random_state, tmp_path):
    det = detector(random_state, image_size=56, preprocessing="agnostic")
    det.check_shots(det.config, 1)
    with pytest.raises(FewShotError):
        det.check_shots(det.config, 0)
    images = torch.rand(3, 3, 56, 56)
    det.fit(batches(images[:1], "bottle"))
    assert det.record_extras()["bank_size"] == len(ANGLES) * 16
    assert det.record_extras()["rotation_source"] == "input images"
    scores, maps = det.predict(batches(images[1:], "bottle")[0]).numpy()
    assert scores.shape == (2,) and maps.shape == (2, 56, 56) and (scores > 0).all()
    assert det.knn_device() == "cpu faiss"
    # through the harness the reference is re-read and rotated at its original size (70 px here),
    # and sigma 4 of the original's pixels is 4 * 56/70 at the job's geometry
    path = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 70, 3), dtype=np.uint8)).save(path)
    batch = Batch(images=det.preprocess().image(Image.open(path).convert("RGB"))[None], labels=torch.zeros(1),
                  paths=[str(path)], categories=["bottle"], defect_types=["good"])
    views, source = det._reference_views(batch, 0, rotation=True)
    assert source == "original files" and len(views) == len(ANGLES) and torch.equal(views[0], batch.images[0])
    det.fit([batch])
    det.predict(batch)
    assert det.record_extras()["map_sigma_at_geometry"]["bottle"] == [[3.2, 3.2]]


def test_profiles_geometry_and_errors(monkeypatch, tmp_path):
    cls = METHODS.get("anomalydino")
    paper = resolve_config(cls.Config, cls.PROFILES, "paper", {}, method="anomalydino")
    assert (paper.backbone, paper.image_size, paper.preprocessing, paper.crop_size) == (TAG, 448, "agnostic", None)
    assert cls.pretrained_tags(paper) == [TAG]
    pre = make(image_size=28).preprocess()
    assert pre.describe() == "resize28-bicubic"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((28, 28), Image.BICUBIC))
    assert np.array_equal((pre.image(img) * 255).round().byte().permute(1, 2, 0).numpy(), expected)
    assert Preprocess(image_size=28).describe() == "resize28"
    with pytest.raises(ConfigError):
        resolve_config(cls.Config, cls.PROFILES, "quick", {"preprocessing": "agnostic_no_mask", "mask_threshold": "5"},
                       method="anomalydino")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError):  # paper never falls back to random weights
        make(profile="paper", weights=None, image_size=28)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = make(profile="quick", weights=None, image_size=28)
    assert det.weights_info().is_random and any("RANDOM" in str(w.message) for w in caught)


def test_weights_folder_file_of_a_vit_is_checked_against_the_whole_model(monkeypatch, tmp_path):
    """adbench.weights' up-front check must accept a timm-layout DINOv2 file (timm wraps ViTs'
    features_only model, prefixing every key) and load it into the method's network."""
    from adbench.weights import check_available, unusable_file_problem

    net = DinoV2(TAG, weights="random")
    randomise(net.model, seed=3)
    path = tmp_path / f"{TAG}.pth"
    torch.save(net.model.state_dict(), path)
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(tmp_path))
    assert unusable_file_problem(path, TAG) is None
    assert check_available({TAG: ["anomalydino"]}, None, random_allowed={"anomalydino": False}) == []
    loaded = DinoV2(TAG)
    assert loaded.weights.source == f"weights dir {path.name}" and loaded.weights.sha256
    assert torch.equal(loaded.model.blocks[0].ls1.gamma, net.model.blocks[0].ls1.gamma)
    assert math.isclose(float(loaded.model.norm.weight.sum()), float(net.model.norm.weight.sum()))


# --- (f) the memory bank is the job's checkpoint ------------------------------------------------
def test_bank_checkpoint_restores_without_a_reference_pass(random_state, tmp_path, monkeypatch):
    """A job killed while scoring (its final checkpoint holds the bank) or rerun from a kept
    checkpoint: the bank comes back without embedding a reference image, and scores the same."""
    from resume_kit import checkpointing

    cls = METHODS.get("anomalydino")
    config = resolve_config(cls.Config, cls.PROFILES, "quick", {"image_size": 56, "preprocessing": "agnostic"},
                            method="anomalydino")

    def build(path):
        det = cls(config, RunContext(seed=0, weights="random", profile="quick", checkpoints=checkpointing(path, 0, 1e9)))
        det.backbone.model.load_state_dict(random_state)
        return det

    images = torch.rand(5, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "job.ckpt"
    first = build(path)
    first.fit(batches(images[:2], "bottle"))
    assert path.is_file() and first.context.checkpoints.saves == 1
    expected = first.predict(batches(images[2:], "bottle")[0])

    again = build(path)

    def no_reference_pass(*args, **kwargs):
        raise AssertionError("a reference image was embedded again")

    monkeypatch.setattr(again, "features", no_reference_pass)
    again.fit(batches(images[:2], "bottle"))
    monkeypatch.undo()
    assert again.context.checkpoints.resumed.final
    assert again.record_extras()["bank_size"] == 2 * len(ANGLES) * 16
    got = again.predict(batches(images[2:], "bottle")[0])
    assert torch.equal(expected.scores, got.scores) and torch.equal(expected.maps, got.maps)
    assert again.record_extras() == first.record_extras()  # the bank facts came back with the bank
