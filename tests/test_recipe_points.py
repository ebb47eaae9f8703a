"""Issue 24, "recipe points" and "two silent options": each change observed in what runs.

* Reverse Distillation's ``paper`` profile trains on batches of 16 (RD4AD ``main.py``), ``miad``
  on MIAD's 32 (and ``quick`` keeps the 32 its measured budget was made with): the images of
  every optimiser step are counted in the training loop itself.
* PatchCore's ``paper`` profile keeps exactly the official coreset selection (projected-space
  ranking: ``components.coreset`` called with the official sampler's arguments); ``quick`` keeps
  the true-distance variant.
* UniAD's ``miad`` profile trains unified: through the real runner, the records say so, and a
  ``--profile miad`` job that would train on one category stops with one line.
* cutpaste_patch: ``aligned_categories`` with an explicit ``gde_mode`` and
  ``shared_gde_max_patches`` with ``gde_mode=per_location`` are one-line CLI errors.

Random weights and tiny images throughout (about 20 s on 2 cores).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.optim.optimizer import register_optimizer_step_pre_hook

import adbench_testkit
from adbench.cli import main
from adbench.components.coreset import approximate_greedy_coreset, coreset_size
from adbench.config import resolve_config
from adbench.dataset import CategoryInfo
from adbench.detector import RunContext
from adbench.errors import ConfigError
from adbench.registry import METHODS


def _detector(method, profile, overrides, **context):
    cls = METHODS.get(method)
    config = resolve_config(cls.Config, cls.PROFILES, profile, overrides, method=method)
    torch.manual_seed(0)
    return cls(config, RunContext(seed=0, weights="random", profile=profile, **context))


def _images(n, size, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- 1. Reverse Distillation: images per optimiser step ---------------------------------------
def _rd_images_per_step(profile: str, n_images: int = 40) -> list[int]:
    """Fit one epoch of ``profile`` (batch size untouched; a small random teacher, 32 px) and
    return the number of images behind each optimiser step."""
    det = _detector("reverse_distillation", profile, {"backbone": "resnet18", "image_size": 32, "epochs": 1,
                                                     "oce_blocks": 1, "decoder_blocks": (1, 1, 1)})
    seen: list[int] = []
    steps: list[int] = []
    forward = det.bottleneck.register_forward_pre_hook(lambda module, args: seen.append(int(args[0][0].shape[0])))
    step = register_optimizer_step_pre_hook(lambda opt, args, kwargs: steps.append(seen[-1]))
    try:
        det.fit(adbench_testkit.as_batches(_images(n_images, 32), batch_size=8))
    finally:
        forward.remove()
        step.remove()
    assert len(seen) == len(steps)  # one forward per step: the training loop, nothing else
    return steps


@pytest.mark.usefixtures("one_torch_thread")
def test_reverse_distillation_paper_trains_on_batches_of_16_miad_and_quick_on_32():
    assert _rd_images_per_step("paper") == [16, 16, 8]  # RD4AD main.py: batch_size = 16
    assert _rd_images_per_step("miad") == [32, 8]  # MIAD appendix A.2.1: "a batch size of 32"
    assert _rd_images_per_step("quick") == [32, 8]  # the measured CPU budget, unchanged


# --- 2. PatchCore: the paper profile's coreset is the official selection ----------------------
def _bank_and_embeddings(profile: str, workdir) -> tuple[torch.Tensor, np.ndarray]:
    """A fitted PatchCore's memory bank, and the float16 candidates it selected from."""
    det = _detector("patchcore", profile, {"backbone": "resnet18", "image_size": 64, "crop_size": None},
                    workdir=str(workdir))
    batches = adbench_testkit.as_batches(_images(8, 64, seed=1), batch_size=4)
    det.fit(batches)
    emb = torch.cat([det.embed(b.images).permute(0, 2, 3, 1).reshape(-1, det.aggregator.dim) for b in batches])
    return det.bank, emb.to(torch.float16).numpy()  # the EmbeddingStore keeps float16


def _selected(candidates: np.ndarray, picks: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(candidates[np.sort(picks.numpy())].astype("float32"))


@pytest.mark.usefixtures("one_torch_thread")
def test_patchcore_paper_coreset_is_the_official_selection_quick_keeps_true_distance(tmp_path):
    bank, candidates = _bank_and_embeddings("paper", tmp_path)
    k = coreset_size(len(candidates), 0.1)
    # the official ApproximateGreedyCoresetSampler: 128-d projection, 10 random starts, ranking
    # in the projected space (patchcore-inspection src/patchcore/sampler.py); job seed 0
    official = approximate_greedy_coreset(candidates, k, proj_dim=128, num_starts=10, seed=0, true_distance=False)
    variant = approximate_greedy_coreset(candidates, k, proj_dim=128, num_starts=10, seed=0, true_distance=True)
    assert set(official.tolist()) != set(variant.tolist())  # the two selections differ on these candidates
    assert bank.shape == (k, candidates.shape[1]) and torch.equal(bank, _selected(candidates, official))
    quick_bank, quick_candidates = _bank_and_embeddings("quick", tmp_path)  # same overrides: only the ranking differs
    assert np.array_equal(quick_candidates, candidates)
    assert torch.equal(quick_bank, _selected(candidates, variant))


# --- 3. UniAD: the miad profile trains unified, and the record says so -----------------------
UNIAD_TINY = {"backbone": "tf_efficientnet_lite0.in1k", "image_size": 64, "hidden_dim": 32, "heads": 4,
              "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 64, "neighbour_size": 3, "epochs": 1,
              "batch_size": 4}


def _uniad_miad_run(tmp_path, name, categories, **options):
    from adbench.run.runner import RunOptions, run

    data = adbench_testkit.make_kit_data(tmp_path / name / "data", categories=categories, n_train=4, n_good=2,
                                         n_bad=2, size=64)
    return run(RunOptions(
        method="uniad", dataset="kitgen", data_root=str(data), profile="miad", weights="random",
        set_options=[f"{k}={v}" for k, v in UNIAD_TINY.items()], plugins=["adbench_testkit"],
        results=str(tmp_path / name / "results"), progress=False, **options,
    ), log=lambda msg: None)


def test_uniad_miad_is_unified_in_the_record_and_a_single_job_stops(tmp_path):
    unified = _uniad_miad_run(tmp_path, "unified", ("obj_b", "tex_a"), protocol="unified")
    assert unified.exit_code == 0 and len(unified.plan.jobs) == 1
    for record in unified.records:
        assert record["status"] == "ok" and record["profile"] == "miad"
        assert record["protocol"] == "unified" and record["config"]["recipe_protocol"] == "unified"
        assert sorted(record["training_categories"]) == ["obj_b", "tex_a"]
        assert sorted(record["record_extras"]["train_categories"]) == ["obj_b", "tex_a"]
    # --profile miad with the default --protocol single: the run stops before any job
    with pytest.raises(ConfigError) as stopped:
        _uniad_miad_run(tmp_path, "single", ("obj_b",))
    assert str(stopped.value) == (
        "uniad --profile miad trains one model over every category (recipe_protocol=unified), "
        "but this job trains on obj_b alone: add --protocol unified (over several categories), or --set "
        "recipe_protocol=single to train one model per category")
    assert not list((tmp_path / "single" / "results").rglob("*.json"))


def test_uniad_miad_single_is_a_switch_and_the_check_goes_both_ways():
    one = {"obj_b": CategoryInfo("obj_b")}
    two = {"obj_b": CategoryInfo("obj_b"), "tex_a": CategoryInfo("tex_a", "texture")}
    _detector("uniad", "miad", {**UNIAD_TINY, "recipe_protocol": "single"}, categories=one)  # builds
    _detector("uniad", "miad", UNIAD_TINY, categories=two)
    _detector("uniad", "paper", UNIAD_TINY, categories=one)  # paper: any protocol
    _detector("uniad", "paper", UNIAD_TINY, categories=two)
    with pytest.raises(ConfigError, match=r"model per category \(recipe_protocol=single\).*over 2 categories"):
        _detector("uniad", "miad", {**UNIAD_TINY, "recipe_protocol": "single"}, categories=two)


# --- 4. cutpaste_patch: two options that used to be silent ------------------------------------
@pytest.mark.parametrize("sets, line", [
    (["gde_mode=shared", "aligned_categories=obj_b"],
     "error: --set aligned_categories=obj_b has no effect: gde_mode=shared is set explicitly "
     "(only gde_mode=auto reads it)"),
    (["gde_mode=per_location", "aligned_categories=obj_b"],
     "error: --set aligned_categories=obj_b has no effect: gde_mode=per_location is set explicitly "
     "(only gde_mode=auto reads it)"),
    (["gde_mode=per_location", "shared_gde_max_patches=500"],
     "error: --set shared_gde_max_patches=500 has no effect: gde_mode=per_location fits one GDE per "
     "location on every patch"),
])
def test_cutpaste_patch_inert_gde_options_are_one_line_cli_errors(tmp_path, sets, line):
    data = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",))
    argv = ["run", "--plugin", "adbench_testkit", "--method", "cutpaste_patch", "--dataset", "kitgen",
            "--data-root", str(data), "--results", str(tmp_path / "res"), "-q"]
    for item in sets:
        argv += ["--set", item]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("*.json"))
    # where they are read, the same values are accepted
    cls = METHODS.get("cutpaste_patch")
    resolve_config(cls.Config, cls.PROFILES, "paper", {"gde_mode": "auto", "aligned_categories": "obj_b",
                                                       "shared_gde_max_patches": 500}, method="cutpaste_patch")
    resolve_config(cls.Config, cls.PROFILES, "paper", {"gde_mode": "shared", "shared_gde_max_patches": 500},
                   method="cutpaste_patch")
