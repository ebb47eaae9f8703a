"""Backbone: weight resolution order, safe loading, one-line errors, layer geometry."""
from __future__ import annotations

import warnings

import pytest
import torch

import adbench.weights
from adbench.components.backbone import Backbone
from adbench.errors import ConfigError, WeightsError
from adbench.weights import WeightsInfo, exact_tag, file_sha256

LITE0 = "tf_efficientnet_lite0"
TAG = "tf_efficientnet_lite0.in1k"


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
    """A full-model lite0 state dict (random values), saved under the exact tag's file name."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model(LITE0, pretrained=False)
    path = tmp_path_factory.mktemp("w") / f"{TAG}.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_geometry_lite0_random():
    bb = Backbone(LITE0, (2, 3), weights="random")
    assert bb.weights_tag == "random" and bb.model_name == TAG
    assert bb.channels == [40, 112] and bb.strides == [8, 16]
    feats = bb(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in bb.parameters())


def test_layer_names_accepted_and_wrong_names_are_one_line():
    bb = Backbone("resnet18.tv_in1k", ("layer2", "layer3"), weights="random")
    assert bb.strides == [8, 16]
    with pytest.raises(ConfigError) as info:
        Backbone("resnet18", ("layer9",), weights="random")
    assert "layer9" in _one_line(info.value) and "layer2" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Backbone("resnet18", (7,), weights="random")
    _one_line(info.value)
    with pytest.raises(ConfigError):
        Backbone("not_a_model_xyz", (2,), weights="random")


def test_tags_are_exact_and_bare_names_resolve_to_what_timm_loads():
    """timm's bare names are other trainings than the papers used: the record must say which."""
    assert exact_tag("wide_resnet50_2.tv_in1k") == "wide_resnet50_2.tv_in1k"
    assert exact_tag("wide_resnet50_2") == "wide_resnet50_2.racm_in1k"
    assert exact_tag("resnet18") == "resnet18.a1_in1k"
    assert exact_tag("efficientnet_b4") == "efficientnet_b4.ra2_in1k"
    with pytest.raises(ConfigError) as info:
        exact_tag("wide_resnet50_2.no_such_tag")
    assert "tv_in1k" in _one_line(info.value)
    # a tag's own normalisation: lite0 uses 0.5/0.5, the torchvision ResNet ImageNet's
    assert torch.allclose(Backbone("resnet18.tv_in1k", (2,), weights="random").std.flatten(),
                          torch.tensor([0.229, 0.224, 0.225]))


def test_file_named_for_the_tag_counts_and_weights_path_wins(lite0_state, tmp_path, monkeypatch):
    path, state = lite0_state
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(path.parent))
    bb = Backbone(TAG, (2, 3))
    assert bb.weights == WeightsInfo(TAG, f"weights dir {TAG}.pth", file_sha256(path))
    key = "conv_stem.weight"
    assert torch.equal(bb.model.state_dict()[key], state[key])
    other = tmp_path / "other.pth"
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, other)
    bb2 = Backbone(LITE0, (2, 3), weights=str(other))
    assert bb2.weights.tag == TAG and bb2.weights.source.startswith("--weights other.pth (sha256 not in")
    assert bb2.weights.sha256 == file_sha256(other)
    assert torch.equal(bb2.model.state_dict()[key], state[key] + 1)


def test_untagged_file_of_unknown_origin_never_counts_for_a_tag(lite0_state, tmp_path, monkeypatch):
    """A ``<model>.pth`` whose content adbench does not know is not taken for a paper tag."""
    _, state = lite0_state
    torch.save(state, tmp_path / f"{LITE0}.pth")
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        Backbone(TAG, (2, 3))
    text = _one_line(info.value)
    assert TAG in text and f"{LITE0}.pth in that folder does not count" in text
    with pytest.warns(UserWarning, match="RANDOM"):
        assert Backbone(TAG, (2, 3), allow_random_fallback=True).weights_tag == "random"


def test_file_known_by_sha256_counts_whatever_its_name(lite0_state, tmp_path, monkeypatch):
    path, state = lite0_state
    renamed = tmp_path / "downloaded-somewhere.pth"
    renamed.write_bytes(path.read_bytes())
    monkeypatch.setitem(adbench.weights.KNOWN_FILES, file_sha256(renamed), (TAG, renamed.stat().st_size))
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(tmp_path))
    bb = Backbone(LITE0, (2, 3))
    assert bb.weights.tag == TAG and bb.weights.source == "weights dir downloaded-somewhere.pth"
    # the same known file given as --weights for another tag is refused: it is not that tag
    with pytest.raises(WeightsError) as info:
        Backbone("tf_efficientnet_lite1", (2, 3), weights=str(renamed))
    assert "is tf_efficientnet_lite0.in1k" in _one_line(info.value)


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
        Backbone("resnet18.tv_in1k", (2, 3), allow_random_fallback=False)
    assert "resnet18.tv_in1k" in _one_line(info.value) and "--weights" in str(info.value)
    with pytest.warns(UserWarning, match="RANDOM"):
        bb = Backbone("resnet18.tv_in1k", (2, 3), allow_random_fallback=True)
    assert bb.weights_tag == "random" and bb.weights.source.startswith("random (fallback")


def test_only_quick_profiles_may_fall_back_to_random_weights():
    from adbench.detector import profile_allows_random_weights

    assert profile_allows_random_weights("quick") and profile_allows_random_weights("quick_scratch")
    for profile in ("paper", "paper_pretrained", "miad", "convnext", "paper_64"):
        assert not profile_allows_random_weights(profile)


def test_real_lite0_weights_load_by_sha256(shared_weights, monkeypatch):
    """../shared's tf_efficientnet_lite0.pth is timm's tf_efficientnet_lite0.in1k, known by its
    sha256 (its name does not state the tag)."""
    monkeypatch.setenv("ADBENCH_WEIGHTS_DIR", str(shared_weights))
    bb = Backbone(TAG, (2, 3))
    assert bb.weights == WeightsInfo(TAG, f"weights dir {LITE0}.pth",
                                     "ff425cba94f9d35bf0cd8b6018ada28476f74f9ef5a475a14339ce60d849b7a4")
    # lite0's timm config normalises with mean = std = 0.5 (weights README)
    assert torch.allclose(bb.mean.flatten(), torch.full((3,), 0.5))
