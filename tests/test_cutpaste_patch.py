"""CutPaste patch level (methods/cutpaste_patch.py): receptive-field upsampling, image score,
non-square inputs, options. Upsampling tests need no network; detector tests train one or two
steps of a tiny random-init network (single thread)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.config import resolve_config
from adbench.data import Batch
from adbench.detector import RunContext
from adbench.errors import ConfigError
from adbench.registry import METHODS

from adbench_testkit import stripes_with_blobs

CutPastePatch = METHODS.get("cutpaste_patch")
from adbench.methods.cutpaste_patch import gaussian_kernel, upsample_scores  # noqa: E402  (after the registry load)


# ----------------------------------------------------------------------------- upsampling
@pytest.mark.parametrize("cell", [(0, 0), (6, 6), (12, 12), (0, 12), (12, 3)])
def test_one_hot_cell_is_its_patch_gaussian_with_no_border_boost(cell):
    """A single score spreads the same Gaussian over its own patch wherever the cell is: a corner
    cell is not boosted (pre-issue-13 the overlap division raised corners ~1000x)."""
    i, j = cell
    grid = torch.zeros(1, 13, 13)
    grid[0, i, j] = 5.0
    up = upsample_scores(grid, 32, 8, (128, 128), 10.0)[0]
    centre = upsample_scores(torch.zeros(1, 13, 13).index_put_((torch.tensor([0]), torch.tensor([6]), torch.tensor([6])),
                                                                torch.tensor([5.0])), 32, 8, (128, 128), 10.0)[0]
    assert float(up.max()) == pytest.approx(float(centre.max()), rel=1e-6)  # same peak at a corner
    patch = up[8 * i : 8 * i + 32, 8 * j : 8 * j + 32]
    expected = gaussian_kernel(32, 10.0)
    torch.testing.assert_close(patch / patch.max(), expected / expected.max(), rtol=1e-5, atol=1e-6)
    outside = up.clone()
    outside[8 * i : 8 * i + 32, 8 * j : 8 * j + 32] = 0
    assert float(outside.abs().max()) == 0.0  # nothing leaves the patch (32x32 kernel, A.5)
    ys, xs = torch.nonzero(up == up.max(), as_tuple=True)  # peak on the patch centre (15.5, 15.5)
    assert set(ys.tolist()) <= {8 * i + 15, 8 * i + 16} and set(xs.tolist()) <= {8 * j + 15, 8 * j + 16}


@pytest.mark.parametrize("stride,size,sigma,ripple", [(4, 256, 10.0, 0.01), (8, 128, 10.0, 0.05), (8, 128, 5.0, 0.01)])
def test_constant_grid_is_constant_inside_and_fades_at_the_border(stride, size, sigma, ripple):
    """The sum of Gaussians (FCDD): a constant grid c gives c at the best-covered pixels, within a
    small ripple of c in the interior, never more than c, and less towards the border."""
    g = (size - 32) // stride + 1
    up = upsample_scores(torch.full((2, g, g), 3.0), 32, stride, (size, size), sigma)
    assert up.shape == (2, size, size)
    assert float(up.max()) == pytest.approx(3.0, rel=1e-6)
    inner = up[:, 32:-32, 32:-32]
    assert float(inner.min()) >= 3.0 * (1 - ripple)
    row = up[0, size // 2]
    assert bool((row[:16].diff() >= 0).all()) and bool((row[-16:].diff() <= 0).all())
    assert float(up[0, 0, 0]) < 0.05 * 3.0  # corners get the least mass, not the most


def test_overlap_norm_reproduces_the_old_weighted_mean():
    """``upsample_norm=overlap`` (pre-issue-13): a pixel-wise weighted mean, constant in -> out."""
    up = upsample_scores(torch.full((1, 57, 57), 3.0), 32, 4, (256, 256), 8.0, norm="overlap")
    torch.testing.assert_close(up, torch.full_like(up, 3.0))
    with pytest.raises(ValueError, match="norm"):
        upsample_scores(torch.ones(1, 57, 57), 32, 4, (256, 256), 8.0, norm="mean")


def test_non_square_grid_and_uncovered_remainder():
    """Height and width are independent; pixels beyond the last patch (size - patch not a
    multiple of the stride) are 0, and the grid is never stretched to fit."""
    h, w = 70, 100  # (70 - 32) // 8 + 1 = 5 rows, (100 - 32) // 8 + 1 = 9 columns; 6 and 4 px left over
    grid = torch.zeros(1, 5, 9)
    grid[0, 2, 7] = 1.0
    up = upsample_scores(grid, 32, 8, (h, w), 6.0)[0]
    assert up.shape == (h, w)
    y, x = divmod(int(up.argmax()), w)
    assert abs(y - (16 + 15.5)) <= 0.5 and abs(x - (56 + 15.5)) <= 0.5  # centre of patch (2, 7)
    full = upsample_scores(torch.ones(1, 5, 9), 32, 8, (h, w), 6.0)[0]
    assert float(full[64:].abs().max()) == 0.0 and float(full[:, 96:].abs().max()) == 0.0
    assert float(full[:64, :96].min()) > 0.0
    with pytest.raises(ValueError, match="more than"):
        upsample_scores(torch.ones(1, 6, 9), 32, 8, (h, w), 6.0)


# ----------------------------------------------------------------------------- options
def _cfg(profile="quick", **overrides):
    return resolve_config(CutPastePatch.Config, CutPastePatch.PROFILES, profile, overrides, method="cutpaste_patch")


@pytest.mark.parametrize("overrides", [
    {"translate": "0.2"}, {"embed_batch_size": "64"}, {"ensemble": "2"},
    {"backbone": "tf_efficientnet_lite0.in1k", "feature_level": "level7"},
])
def test_options_the_patch_model_never_reads_are_config_errors(overrides):
    option = list(overrides)[-1]
    with pytest.raises(ConfigError) as err:
        _cfg(**overrides)
    text = str(err.value)
    assert text.startswith(f"--set {option}=") and "no effect" in text and "\n" not in text
    default = {"translate": "0.1", "embed_batch_size": "32", "ensemble": "1", "feature_level": "pool"}[option]
    _cfg(**{**overrides, option: default})  # the default itself is fine


def test_gde_l2_normalize_reaches_the_patch_gde():
    rng = np.random.default_rng(5)
    det = _detector(test_stride=16, gde_mode="shared", gde_l2_normalize="true")
    det.fit([_batch(_images(rng, 4, 64, 64))])
    assert det.gde.l2_normalize is True


def test_defaults_are_the_paper_and_fcdd_values():
    cfg = _cfg("paper")
    assert (cfg.patch_size, cfg.test_stride, cfg.image_size) == (32, 4, 256)  # A.5
    assert (cfg.smoothing_sigma, cfg.upsample_norm, cfg.image_score) == (10.0, "none", "grid_max")
    assert _cfg("paper_64").patch_size == 64  # sec. 4.2
    for name in CutPastePatch.PROFILES:
        _cfg(name)
    with pytest.raises(ConfigError, match="smoothing_sigma"):
        _cfg(smoothing_sigma="0")
    with pytest.raises(ConfigError, match="upsample_norm"):
        _cfg(upsample_norm="mean")
    with pytest.raises(ConfigError, match="patch_size"):
        _cfg(image_size="24")


# ----------------------------------------------------------------------------- detector
def _images(rng: np.random.Generator, n: int, h: int, w: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        v = 0.5 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 5) * (xx + 0.3 * yy) + rng.uniform(0, 2 * np.pi))
        out.append(np.stack([v * c for c in rng.uniform(0.4, 1.0, 3)]).astype(np.float32))
    return out


def _batch(images, category="toy") -> Batch:
    n = len(images)
    return Batch(images=torch.from_numpy(np.stack(images)), labels=torch.zeros(n, dtype=torch.long),
                 paths=[f"{category}/{i}.png" for i in range(n)], categories=[category] * n, defect_types=["good"] * n)


def _detector(**overrides):
    torch.manual_seed(0)
    base = {"num_threads": 1, "head_dims": (16,), "image_size": 64, "epochs": 1, "steps_per_epoch": 1,
            "batch_size": 6, "patch_batch_size": 256}
    base.update(overrides)
    return CutPastePatch(_cfg(**base), RunContext(seed=0, profile="quick", weights="random"))


@pytest.mark.parametrize("gde_mode", ["per_location", "shared"])
def test_non_square_images_end_to_end(gde_mode):
    """A 48x80 input (outside the harness, which squashes to square): a 3x7 grid at stride 8,
    maps at the input's size, image score = grid maximum (Fig. 1: the score map is max-pooled)."""
    rng = np.random.default_rng(0)
    det = _detector(test_stride=8, gde_mode=gde_mode)
    det.fit([_batch(_images(rng, 6, 48, 80))])
    assert det.grid_shape == (3, 7)
    test = _batch(_images(rng, 2, 48, 80))
    pred = det.predict(test)
    maps = torch.as_tensor(pred.maps)
    assert maps.shape == (2, 48, 80)
    grid = det.embed_grid(test.images)
    if gde_mode == "per_location":  # one GDE per cell, cell by cell
        scores = det.gde.score(grid.reshape(2, 21, -1).transpose(0, 1)).transpose(0, 1)
    else:
        scores = det.gde.score(grid.reshape(42, -1)).reshape(2, 21)
    torch.testing.assert_close(det.grid_scores(test.images).reshape(2, 21), scores)
    torch.testing.assert_close(torch.as_tensor(pred.scores), scores.amax(1))
    assert bool((maps.flatten(1).amax(1) <= torch.as_tensor(pred.scores) * (1 + 1e-5)).all())
    if gde_mode == "per_location":
        from adbench.errors import DataError

        with pytest.raises(DataError, match="grid"):
            det.predict(_batch(_images(rng, 1, 48, 64)))


def test_map_max_image_score_option():
    rng = np.random.default_rng(1)
    det = _detector(test_stride=16, image_score="map_max", gde_mode="shared")
    det.fit([_batch(_images(rng, 4, 64, 64))])
    pred = det.predict(_batch(_images(rng, 2, 64, 64)))
    torch.testing.assert_close(torch.as_tensor(pred.scores), torch.as_tensor(pred.maps).flatten(1).amax(1))


@pytest.mark.parametrize("category,mode", [("bottle", "per_location"), ("carpet", "shared")])
def test_patch_level_localises_and_picks_gde_mode(category, mode):
    """(Replaces the pre-issue-13 version in test_cutpaste.py, which asserted score = map max.)"""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    train, test, labels, masks = stripes_with_blobs(rng, 12, 8)
    det = _detector(head_dims=(64, 64), test_stride=8, steps_per_epoch=5, batch_size=24)
    det.fit([_batch(train[:8], category), _batch(train[8:], category)])
    assert det.gde_mode_used == mode and det.record_extras()["gde_mode_used"] == mode
    batch = _batch(test, category)
    pred = det.predict(batch)
    maps = torch.as_tensor(pred.maps)
    assert maps.shape == (8, 64, 64)
    torch.testing.assert_close(torch.as_tensor(pred.scores), det.grid_scores(batch.images).flatten(1).amax(1))
    assert roc_auc_score(np.stack(masks).ravel(), maps.numpy().ravel()) > 0.6
