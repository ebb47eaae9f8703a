"""CutPaste switches of the paper's tables (issue 13): batch per mode, fully frozen batch-norm,
EfficientNet level features, the ensemble, and the no-silent-options rule. Observed on outputs
(parameters, features, scores), without training a model: random weights, tiny images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adbench.components.gde import GaussianDensity
from adbench.config import resolve_config
from adbench.data import Batch
from adbench.detector import RunContext
from adbench.errors import ConfigError
from adbench.methods.cutpaste import CutPasteConfig, CutPasteNet, CutPasteTrainer, Member, load_encoder
from adbench.registry import METHODS

CutPaste = METHODS.get("cutpaste")
CutPastePatch = METHODS.get("cutpaste_patch")


def _config(profile="paper", **overrides):
    return resolve_config(CutPaste.Config, CutPaste.PROFILES, profile, overrides, method="cutpaste")


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, size, size)).astype(np.float32))


def _batch(images: torch.Tensor) -> Batch:
    n = len(images)
    return Batch(images=images, labels=torch.zeros(n, dtype=torch.long), paths=[f"x/{i}.png" for i in range(n)],
                 categories=["x"] * n, defect_types=["good"] * n)


@pytest.mark.parametrize("mode,batch", [("3way", 96), ("binary", 64), ("scar", 64), ("union", 64), ("cutout", 64),
                                        ("scar_cutout", 64), ("confetti", 64), ("rotation", 128)])
def test_paper_batch_follows_the_mode(mode, batch):
    """Appendix A.1: "batch size of 64 (or 96 for 3-way)" = 32 images x classes."""
    cfg = _config(mode=mode)
    assert cfg.batch_size == batch and cfg.to_dict()["batch_size"] == batch  # the record holds the used value
    det = CutPaste(cfg, RunContext())
    assert det.record_extras()["images_per_step"] == 32
    assert _config(mode=mode, batch_size=30).batch_size == 30  # an explicit value wins
    assert resolve_config(CutPastePatch.Config, CutPastePatch.PROFILES, "paper").batch_size == 96


def test_profiles_of_the_paper_tables():
    assert _config("paper_ensemble").ensemble == 5
    for name, level, epochs in [("paper_pretrained", "pool", 64), ("paper_level7", "level7", 64),
                                ("paper_imagenet", "pool", 0), ("paper_imagenet_level7", "level7", 0)]:
        cfg = _config(name)
        assert (cfg.backbone, cfg.pretrained, cfg.feature_level, cfg.epochs) == (
            "tf_efficientnet_b4.aa_in1k", True, level, epochs)
    for name in CutPaste.PROFILES:  # every profile passes the configuration checks
        CutPaste(_config(name), RunContext(profile=name))


@pytest.mark.parametrize("profile,overrides,option", [
    ("paper", {"freeze_bn": True}, "freeze_bn"),
    ("paper", {"head_only_epochs": 2}, "head_only_epochs"),
    ("paper", {"finetune_lr": 0.01}, "finetune_lr"),
    ("quick", {"head_only_epochs": 0, "finetune_lr": 0.01}, "finetune_lr"),
    ("paper", {"mode": "binary", "scar_width": "2,8"}, "scar_width"),
    ("paper", {"mode": "rotation", "scar_length": "5,9"}, "scar_length"),
    ("paper", {"mode": "scar", "area_ratio": "0.1,0.2"}, "area_ratio"),
    ("paper", {"mode": "confetti", "patch_jitter": 0.2}, "patch_jitter"),
    ("paper", {"mode": "scar_cutout", "patch_jitter": 0.2}, "patch_jitter"),
    ("paper", {"cutout_fill": "mean"}, "cutout_fill"),
    ("paper", {"feature_level": "level7"}, "feature_level"),
    ("paper_imagenet", {"lr": 0.1}, "lr"),
    ("paper_imagenet", {"ensemble": 3}, "ensemble"),
    ("paper", {"ensemble": 0}, "ensemble"),
])
def test_no_silent_options(profile, overrides, option):
    with pytest.raises(ConfigError) as err:
        CutPaste(_config(profile, **overrides), RunContext(profile=profile))
    message = str(err.value)
    assert option in message and "\n" not in message


def test_options_that_do_act_are_accepted():
    for overrides in [{"mode": "cutout", "cutout_fill": "random", "area_ratio": "0.1,0.2"},
                      {"mode": "scar_cutout", "scar_width": "2,8"}, {"mode": "binary", "patch_jitter": 0.2},
                      {"gde_l2_normalize": True}, {"ensemble": 3}]:
        CutPaste(_config(**overrides), RunContext())
    CutPaste(_config("paper_pretrained", feature_level="level8"), RunContext(profile="paper_pretrained"))


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for key, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                out[f"{name}.{key}"] = t.detach().clone()
    return out


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_freezes_statistics_and_affine_parameters(freeze):
    """A.4 / Keras trainable=False: after a fine-tuning step the encoder's batch-norm running
    statistics AND gamma/beta are unchanged, while convolutions (and the head) did train."""
    torch.manual_seed(0)
    cfg = _config("quick", image_size=32, batch_size=6, steps_per_epoch=1, freeze_bn=freeze, num_threads=1,
                  head_dims="16,16")
    trainer = CutPasteTrainer(cfg, RunContext(seed=0, weights="random", profile="quick"))
    enc = trainer.net.encoder
    with torch.no_grad():  # nonzero, non-unit statistics and affine values, so any update shows
        for m in enc.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    before, conv_before = _bn_state(enc), enc.conv_stem.weight.detach().clone()
    head_bn = [m for m in trainer.net.head if isinstance(m, torch.nn.BatchNorm1d)][0]
    head_stats = head_bn.running_mean.clone()
    data = (_images(4, 32) * 255).to(torch.uint8)
    trainer._phase(data, 1, 0.5, head_only=False, desc="test")
    after = _bn_state(enc)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not torch.equal(conv_before, enc.conv_stem.weight), "convolutions must train"
    assert not torch.equal(head_stats, head_bn.running_mean), "the new head's batch-norm trains"
    if freeze:
        assert changed == [], f"frozen batch-norm changed: {changed[:4]}"
    else:
        assert any(k.endswith("running_mean") for k in changed) and any(k.endswith(".weight") for k in changed)
        assert any(k.endswith(".bias") for k in changed)
    assert all(p.requires_grad for p in enc.parameters()), "requires_grad is restored after the phase"


@pytest.mark.parametrize("tag,level7,pool", [("tf_efficientnet_lite0.in1k", 192, 1280),
                                             ("tf_efficientnet_b4.aa_in1k", 272, 1792)])
def test_level_features_are_the_pooled_stage_outputs(tag, level7, pool):
    """Rippel et al.'s level N (1 = stem, 2..8 = MBConv stages, 9 = head) in timm: level 7 is
    blocks[5], pooled; level 9 is the usual pooled feature."""
    torch.manual_seed(0)
    encoder, _ = load_encoder(tag, False, None, False)
    net = CutPasteNet(encoder, (8,), 3).eval()
    images = _images(2, 32)
    seen = {}
    hooks = [encoder.blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i in range(7)]
    hooks.append(encoder.bn1.register_forward_hook(lambda m, a, out: seen.__setitem__("stem", out)))
    with torch.no_grad():
        pooled = net.embed(images)
        feats = {level: net.level_features(images, level) for level in (1, 7, 8, 9)}
    for h in hooks:
        h.remove()
    assert pooled.shape == (2, pool) and feats[7].shape == (2, level7)
    torch.testing.assert_close(feats[7], seen[5].mean(dim=(2, 3)))
    torch.testing.assert_close(feats[8], seen[6].mean(dim=(2, 3)))
    torch.testing.assert_close(feats[1], seen["stem"].mean(dim=(2, 3)))
    torch.testing.assert_close(feats[9], pooled)


def test_trainer_embeds_the_configured_level():
    torch.manual_seed(0)
    ctx = RunContext(seed=0, weights="random", profile="quick")
    images = _images(3, 32)
    pool = CutPasteTrainer(_config("quick", head_dims="8"), ctx).embed(images)
    torch.manual_seed(0)
    level = CutPasteTrainer(_config("quick", head_dims="8", feature_level="level7"), ctx).embed(images)
    assert pool.shape == (3, 1280) and level.shape == (3, 192)


class _FakeTrainer:
    """A "trained" member: fixed features per image (a random linear map of the pixels)."""

    def __init__(self, seed: int):
        self.proj = torch.randn(3 * 8 * 8, 5, generator=torch.Generator().manual_seed(seed))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.proj


def test_ensemble_score_is_the_mean_of_the_members_scores():
    det = CutPaste(_config(ensemble=3), RunContext())
    train, test = _images(20, 8, seed=1), _images(4, 8, seed=2)
    members = []
    for seed in (0, 1, 2):
        trainer = _FakeTrainer(seed)
        members.append(Member(seed, trainer, GaussianDensity().fit(trainer.embed(train))))
    det.members = members
    scores = torch.as_tensor(det.predict(_batch(test)).scores)
    each = torch.stack([m.gde.score(m.trainer.embed(test)) for m in members])
    assert not torch.allclose(each[0], each[1])
    torch.testing.assert_close(scores, each.mean(dim=0))


def test_ensemble_fit_trains_seeded_members_and_records_them():
    """ensemble=2 without training steps (epochs=0, random init): members are seeded job
    seed + i, have their own networks and GDEs (L2 option passed on), and the record names them."""
    torch.manual_seed(0)
    cfg = _config(ensemble=2, epochs=0, image_size=32, gde_l2_normalize=True, num_threads=1)
    det = CutPaste(cfg, RunContext(seed=7))
    det.fit([_batch(_images(6, 32))])
    assert [m.seed for m in det.members] == [7, 8]
    assert all(m.gde.l2_normalize for m in det.members)
    test = _images(3, 32, seed=3)
    feats = [m.trainer.embed(test) for m in det.members]
    assert not torch.allclose(feats[0], feats[1]), "members must differ (own seeds)"
    torch.testing.assert_close(torch.as_tensor(det.predict(_batch(test)).scores), det.member_scores(test).mean(0))
    extras = det.record_extras()
    assert [m["seed"] for m in extras["ensemble"]] == [7, 8] and extras["ensemble"][0]["train_steps"] == 0
    assert extras["feature_dim"] == 512 and extras["gde_l2_normalize"] is True


@pytest.mark.parametrize("mode,classes", [("rotation", 4), ("cutout", 2), ("scar_cutout", 2), ("confetti", 2)])
def test_new_modes_size_the_classifier(mode, classes):
    torch.manual_seed(0)
    trainer = CutPasteTrainer(_config(mode=mode, head_dims="8", image_size=32), RunContext(seed=0))
    assert trainer.net.classifier.out_features == classes and trainer.images_per_step() == 32
    batch, labels = trainer.sampler(_images(2, 32), np.random.default_rng(0))
    assert batch.shape[0] == 2 * classes and labels.max() == classes - 1


def test_config_defaults_unchanged_for_existing_fields():
    """Fields cutpaste_patch shares keep their defaults (new fields default to today's behaviour)."""
    cfg = CutPasteConfig()
    assert (cfg.mode, cfg.batch_size, cfg.feature_level, cfg.gde_l2_normalize, cfg.ensemble, cfg.cutout_fill) == (
        "3way", 96, "pool", False, 1, "grey")
