"""Backbone: weight resolution order, safe loading, one-line errors, layer geometry."""
from __future__ import annotations

import warnings

import pytest
import torch

from adbench.components.backbone import Backbone
from adbench.errors import ConfigError, WeightsError

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may depend on (or wait for) the internet."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ADBENCH_WEIGHTS_DIR", raising=False)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip(), text
    return text


@pytest.fixture(scope="module")
def lite0_state(tmp_path_factory):
    """A full-model lite0 state dict (random values) saved the way timm checkpoints are."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model(LITE0, pretrained=False)
    path = tmp_path_factory.mktemp("w") / f"{LITE0}.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_geometry_lite0_random():
    bb = Backbone(LITE0, (2, 3), weights="random")
    assert bb.weights_tag == "random"
    assert bb.channels == [40, 112] and bb.strides == [8, 16]
    feats = bb(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in bb.parameters())


def test_layer_names_accepted_and_wrong_names_are_one_line():
    bb = Backbone("resnet18", ("layer2", "layer3"), weights="random")
    assert bb.strides == [8, 16]
    with pytest.raises(ConfigError) as info:
        Backbone("resnet18", ("layer9",), weights="random")
    assert "layer9" in _one_line(info.value) and "layer2" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Backbone("resnet18", (7,), weights="random")
    _one_line(info.value)
    with pytest.raises(ConfigError):
        Backbone("not_a_model_xyz", (2,), weights="random")


def test_weights_path_wins_over_env_dir(lite0_state, tmp_path, monkeypatch):
    path, state = lite0_state
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(path.parent))
    bb = Backbone(LITE0, (2, 3))
    assert bb.weights_tag == f"imagenet:{LITE0}.pth"
    key = "conv_stem.weight"
    assert torch.equal(bb.model.state_dict()[key], state[key])
    other = tmp_path / "other.pth"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    bb2 = Backbone(LITE0, (2, 3), weights=str(other))
    assert bb2.weights_tag == "file:other.pth"
    assert torch.equal(bb2.model.state_dict()[key], state[key] + 1)


def test_weights_for_another_architecture_is_one_line(tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        Backbone(LITE0, (2, 3), weights=str(path))
    assert str(path) in _one_line(info.value)


def test_missing_keys_are_an_error(lite0_state, tmp_path):
    _, state = lite0_state
    partial = dict(state)
    partial.pop("conv_stem.weight")
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(WeightsError) as info:
        Backbone(LITE0, (2, 3), weights=str(path))
    assert "missing" in _one_line(info.value)


def test_corrupt_and_unsafe_files_are_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint" * 50)
    with pytest.raises(WeightsError) as info:
        Backbone(LITE0, (2, 3), weights=str(corrupt))
    assert str(corrupt) in _one_line(info.value)
    # weights_only=True refuses arbitrary pickled objects
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"fn": warnings.WarningMessage}, unsafe)
    with pytest.raises(WeightsError) as info:
        Backbone(LITE0, (2, 3), weights=str(unsafe))
    _one_line(info.value)
    with pytest.raises(WeightsError) as info:
        Backbone(LITE0, (2, 3), weights=str(tmp_path / "absent.pth"))
    assert "not found" in _one_line(info.value)


def test_paper_never_falls_back_quick_warns():
    with pytest.raises(WeightsError) as info:
        Backbone("resnet18", (2, 3), allow_random_fallback=False)
    assert "--weights" in _one_line(info.value)
    with pytest.warns(UserWarning, match="RANDOM"):
        bb = Backbone("resnet18", (2, 3), allow_random_fallback=True)
    assert bb.weights_tag == "random"


def test_real_lite0_weights_load(shared_weights, monkeypatch):
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(shared_weights))
    bb = Backbone(LITE0, (2, 3))
    assert bb.weights_tag == f"imagenet:{LITE0}.pth"
    # lite0's timm config normalises with mean = std = 0.5 (weights README)
    assert torch.allclose(bb.mean.flatten(), torch.full((3,), 0.5))
