"""``--profile miad`` for FastFlow, DRAEM, the autoencoder and UniAD: every value against the
MIAD benchmark appendix A.2 (../shared/seeds/004) and, where it says "the original code" or is
silent, against the official / reference code. PatchCore's and Reverse Distillation's miad
profiles are checked in their own test files.

Config-level only (no network is built), so the file runs in about a second.
"""
from __future__ import annotations

import dataclasses

import pytest

from adbench.config import resolve_config
from adbench.registry import METHODS

# Appendix A.2.3-A.2.6, value by value (the quote each line rests on is in the comment).
APPENDIX = {
    "fastflow": {  # A.2.3
        "backbone": "wide_resnet50_2.racm_in1k",  # "Wide-ResNet50-2" (the reference code's weights)
        "image_size": 256, "crop_size": None,  # "resized to the input size of 256x256"
        "layers": (1, 2, 3),  # "the last layer in the first three blocks"
        "flow_steps": 8,  # "8-step flows for Wide-ResNet50-2"
        "lr": 1e-3, "weight_decay": 1e-5,  # "Adam ... learning rate of 1e-3 and weight decay of 1e-5"
        "epochs": 500, "batch_size": 32,  # "after 500 epochs training with a batch size of 32"
    },
    "draem": {  # A.2.4
        "image_size": 256, "crop_size": None,  # "zoomed to the input size of 256x256"
        "texture_ops": 3,  # "a set of 3 random augmentation functions"
        "augmenter_pool": "official10",  # "we use the publicly available code" (its 10-op pool)
        "rotate_degrees": 45.0,  # "rotation in the range of (-45, 45) degrees ... non-defective images"
        "epochs": 700, "batch_size": 8,  # "trained for 700 epochs with a batch size of 8"
        "lr": 1e-4, "lr_gamma": 0.2,  # "10^-4 and is multiplied by 0.2 after 560 and 630 epochs"
        "lr_milestones": (0.8, 0.9),  # 560 / 700 and 630 / 700 (see the test below)
    },
    "autoencoder": {  # A.2.5
        "image_size": 256, "crop_size": None,  # "zoomed to the input size of 256x256"
        "epochs": 100, "batch_size": 16,  # "run for 100 epochs with a batch size of 16"
        "lr": 1e-4, "weight_decay": 5e-4,  # "Adam ... learning rate of 0.0001 and a weight decay of 0.0005"
        "map_sigma": 0.0,  # no smoothing is mentioned
    },
    "uniad": {  # A.2.6
        "backbone": "tf_efficientnet_b4.aa_in1k",  # "EfficientNet-b4" (the official code's weights)
        "layers": (0, 1, 2, 3),  # "stage-1 to stage-4 ... 272-channel feature map"
        "image_size": 224, "crop_size": None,  # "zoomed to the input size of 224x224"
        "epochs": 500, "batch_size": 64,  # "trained for 500 epochs ... with batch size 64"
        "weight_decay": 1e-4, "lr": 1e-4,  # "AdamW ... weight decay 0.0001 ... learning rate is 0.0001"
        "lr_step_epoch": 400, "lr_gamma": 0.1,  # "dropped by 0.1 after 400 epochs"
    },
}

# Where the appendix says "the original code" / is silent: the official or reference code.
OFFICIAL = {
    # gathierry/FastFlow configs/wide_resnet50_2.yaml + fastflow.py (AllInOneBlock clamp 2.0)
    "fastflow": {"hidden_ratio": 1.0, "clamp": 2.0, "conv3x3_only": False},
    # VitjanZ/DRAEM: widths, p(anomaly) 0.5, beta < 0.8, p(rotate) 0.3, focal gamma 2, 21x21 filter
    "draem": {"recon_width": 128, "disc_width": 64, "anomaly_prob": 0.5, "beta_max": 0.8, "rotate_prob": 0.3,
              "focal_gamma": 2.0, "score_filter": 21, "anomaly_source": None, "max_steps": None},
    # our documented choices for what the appendix leaves open (module docstring)
    "autoencoder": {"loss": "l2", "skip_min_stride": 16, "base_width": 32, "max_width": 256, "depth": 5,
                    "max_steps": None},
    # zhiyuanyou/UniAD experiments/MVTec-AD/config.yaml
    "uniad": {"hidden_dim": 256, "heads": 8, "encoder_layers": 4, "decoder_layers": 4, "ff_dim": 1024,
              "dropout": 0.1, "neighbour_size": 7, "jitter_scale": 20.0, "grad_clip": 0.1, "score_pool": 16,
              "blur_sigma": 0.0, "recipe_protocol": "unified"},
}

# The only fields where ``miad`` differs from ``paper`` (each method's docstring says why).
DIFFERS_FROM_PAPER = {"fastflow": {}, "draem": {"augmenter_pool": ("paper7", "official10")}, "autoencoder": {},
                      "uniad": {"recipe_protocol": ("any", "unified")}}


def _resolve(method: str, profile: str):
    cls = METHODS.get(method)
    return resolve_config(cls.Config, cls.PROFILES, profile, method=method)


@pytest.mark.parametrize("method", sorted(APPENDIX))
def test_miad_profile_is_the_appendix_recipe(method):
    cfg = _resolve(method, "miad")
    for table in (APPENDIX, OFFICIAL):
        got = {key: getattr(cfg, key) for key in table[method]}
        assert got == table[method], method


def test_draem_miad_steps_at_epochs_560_and_630():
    cfg = _resolve("draem", "miad")
    assert [round(f * cfg.epochs) for f in cfg.lr_milestones] == [560, 630]


@pytest.mark.parametrize("method", sorted(APPENDIX))
def test_miad_differs_from_paper_only_where_documented(method):
    miad, paper = _resolve(method, "miad").to_dict(), _resolve(method, "paper").to_dict()
    diff = {k: (paper[k], miad[k]) for k in miad if miad[k] != paper[k]}
    assert diff == DIFFERS_FROM_PAPER[method]
    assert "miad" in METHODS.get(method).PROFILES  # defined explicitly, so --profile miad runs it


@pytest.mark.parametrize("method", sorted(APPENDIX))
def test_miad_loads_the_exact_pretrained_tags(method):
    cls = METHODS.get(method)
    expected = {"fastflow": ["wide_resnet50_2.racm_in1k"], "uniad": ["tf_efficientnet_b4.aa_in1k"]}
    assert cls.pretrained_tags(_resolve(method, "miad")) == expected.get(method, [])


def test_every_field_is_checked_somewhere():
    """A field added to one of these configs must be placed in APPENDIX or OFFICIAL (or be a
    pure implementation knob listed here), so the miad recipe cannot drift silently."""
    knobs = {"fastflow": {"cache_features"}, "draem": set(), "autoencoder": set(), "uniad": {"feature_cache_gb"}}
    for method in APPENDIX:
        fields = {f.name for f in dataclasses.fields(METHODS.get(method).Config)}
        covered = set(APPENDIX[method]) | set(OFFICIAL[method]) | knobs[method]
        assert fields == covered, (method, fields ^ covered)


def test_method_all_with_profile_miad_runs_the_six_and_notes_the_others(tmp_path):
    """``--method all --profile miad``: exactly the six methods the MIAD benchmark ran, the
    others skipped with one note each (a method named explicitly without the profile is an error)."""
    import adbench_testkit
    from adbench.errors import ConfigError
    from adbench.run.runner import RunOptions, plan_run

    from PIL import Image

    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",))
    textures = tmp_path / "dtd" / "images" / "banded"  # DRAEM's miad recipe pastes DTD textures (issue 24)
    textures.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 40, 40)).save(textures / "banded_0001.jpg")
    opts = RunOptions(method="all", dataset="kitgen", data_root=str(data), profile="miad", weights="random",
                      plugins=["adbench_testkit"], results=str(tmp_path / "res"), progress=False,
                      textures=str(tmp_path / "dtd"))
    plan = plan_run(opts)
    # UniAD's miad recipe trains unified (issue 24): under the default --protocol single it is
    # skipped with a note saying how to run it; --protocol unified runs it
    assert sorted({job.method for job in plan.jobs}) == sorted(
        ["autoencoder", "draem", "fastflow", "patchcore", "reverse_distillation"])
    assert any(n.startswith("skipping uniad: uniad --profile miad trains one model over every category")
               for n in plan.notes)
    two = adbench_testkit.make_kit_data(tmp_path / "two", categories=("obj_b", "tex_a"))
    unified = plan_run(RunOptions(**{**opts.__dict__, "protocol": "unified", "data_root": str(two)}))
    assert "uniad" in {job.method for job in unified.jobs}
    assert not any(n.startswith("skipping uniad") for n in unified.notes)
    plan.notes = [n for n in plan.notes if not n.startswith("skipping uniad")]
    skipped = sorted(n.split(":")[0] for n in plan.notes if n.startswith("skipping "))
    assert skipped == sorted(f"skipping {m}" for m in ("anomalydino", "cutpaste", "cutpaste_patch", "dinomaly",
                                                      "feature_gaussian", "kit_mean", "kit_trained", "kit_scoreonly",
                                                      "mean_image", "tocoad"))
    assert all(n.endswith("it has no 'miad' profile") for n in plan.notes if n.startswith("skipping "))
    with pytest.raises(ConfigError, match="--profile 'miad' is not defined for cutpaste"):
        plan_run(RunOptions(**{**opts.__dict__, "method": "cutpaste"}))
