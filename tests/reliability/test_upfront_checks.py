"""Issue 14, item 5: what used to fail per job (or not at all) is one exit-2 line before any job.

Config values out of range, seeds outside numpy's 32-bit range, YAML that does not parse or is
not UTF-8, unknown method names under ``methods:``, the source of a bad value (``--set`` /
``--config FILE: key`` / ``profile X``), a plugin that raises anything at import, and an empty
``--method``. Every case asserts the exact line, exit code 2 and that no record was written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest

from adbench.config import MethodConfig, resolve_config, yaml_source
from adbench.errors import ConfigError

MAX = 2**32 - 1


def _base(data):
    return ["--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(data)]


def test_config_values_out_of_range(kit_data, run_cli, assert_user_error):
    cases = {
        "image_size=0": "error: --set image_size=0: must be a positive integer",
        "image_size=-32": "error: --set image_size=-32: must be a positive integer",
        "batch_size=0": "error: --set batch_size=0: must be a positive integer",
        "crop_size=64": "error: --set crop_size=64: larger than image_size=32 "
                        "(the centre crop is taken from the resized image)",
        "scale=nan": "error: --set scale=nan: not a number",
    }
    for setting, line in cases.items():
        result, results = run_cli(*_base(kit_data), "--set", setting)
        assert_user_error(result, results, line)
    result, results = run_cli(*_base(kit_data), "--set", "crop_size=24", "--set", "image_size=16")
    assert_user_error(result, results, "error: --set crop_size=24: larger than image_size=16 "
                                       "(the centre crop is taken from the resized image)")


def test_crop_conflict_names_the_value_the_user_gave():
    @dataclass
    class Cropped(MethodConfig):
        image_size: int = 256
        crop_size: Optional[int] = 224

    with pytest.raises(ConfigError) as exc:
        resolve_config(Cropped, {"paper": {}}, "paper", {"image_size": "128"})
    assert exc.value.problems == ["--set image_size=128: smaller than crop_size=224 (the centre crop is taken "
                                  "from the resized image; set crop_size too, or crop_size=none)"]
    assert resolve_config(Cropped, {"paper": {}}, "paper", {"image_size": "128", "crop_size": "none"}).crop_size is None


@dataclass
class PluginConfig(MethodConfig):
    """A plugin's config: it names fields like the built-ins and gets the shared rules."""

    epochs: int = 10
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    weight_decay: float = 0.0
    max_steps: Optional[int] = None
    embed_batch_size: int = 8


@pytest.mark.parametrize("key,value,why", [
    ("epochs", "-1", "must be >= 0"),
    ("lr", "0", "must be a positive number"),
    ("lr", "-1e-3", "must be a positive number"),
    ("lr", "inf", "must be a positive number"),
    ("finetune_lr", "0", "must be a positive number"),
    ("weight_decay", "-0.1", "must be >= 0"),
    ("max_steps", "0", "must be a positive integer"),
    ("embed_batch_size", "0", "must be a positive integer"),
])
def test_shared_rules_reach_every_config(key, value, why):
    with pytest.raises(ConfigError) as exc:
        resolve_config(PluginConfig, {"paper": {}}, "paper", {key: value}, method="plug")
    shown = str(float(value)) if key in ("lr", "finetune_lr", "weight_decay") else value
    assert exc.value.problems == [f"--set {key}={shown}: {why}"]
    # 0 epochs is a real setting (CutPaste on ImageNet features), None an unset cap
    resolve_config(PluginConfig, {"paper": {}}, "paper", {"epochs": "0", "max_steps": "none"})


def test_every_builtin_profile_passes_the_shared_rules():
    from adbench.registry import METHODS

    for name in METHODS.names():
        cls = METHODS.get(name)
        for profile in sorted(set(cls.PROFILES) | {"paper"}):
            resolve_config(cls.Config, cls.PROFILES, profile, {}, method=name)


def test_bad_value_names_its_real_source():
    profiles = {"paper": {}, "tiny": {"image_size": 0}}
    sources = {"image_size": yaml_source("grid.yaml"), "batch_size": yaml_source("grid.yaml", "plug")}

    def problem(profile, overrides):
        with pytest.raises(ConfigError) as exc:
            resolve_config(PluginConfig, profiles, profile, overrides, method="plug", sources=sources)
        return exc.value.problems

    assert problem("paper", {"image_size": 0}) == [
        "--config grid.yaml: key image_size=0: must be a positive integer"]
    assert problem("paper", {"image_size": "big"}) == [
        "--config grid.yaml: key image_size='big': expected an integer"]
    assert problem("paper", {"batch_size": 0}) == [
        "--config grid.yaml: key methods.plug.batch_size=0: must be a positive integer"]
    assert problem("paper", {"lr": "0"}) == ["--set lr=0.0: must be a positive number"]
    assert problem("tiny", {}) == ["profile tiny: key image_size=0: must be a positive integer"]
    # a method's own check in __post_init__ written with "--set" is relabelled the same way
    with pytest.raises(ConfigError) as exc:
        resolve_config(_OwnRule, {"paper": {}}, "paper", {"ratio": 2}, sources={"ratio": yaml_source("g.yaml")})
    assert exc.value.problems == ["--config g.yaml: key ratio=2.0: must be in [0, 1]"]


@dataclass
class _OwnRule(MethodConfig):
    ratio: float = 0.5

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ConfigError(f"--set ratio={self.ratio}: must be in [0, 1]")


def test_yaml_values_name_the_file_not_set(tmp_path, kit_data, run_cli, assert_user_error):
    """Needs runner.resolve_configs to pass ``sources`` (see the report of issue 14, item 5)."""
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("image_size: 0\n")
    result, results = run_cli(*_base(kit_data), "--config", str(cfg))
    assert_user_error(result, results, f"error: --config {cfg}: key image_size=0: must be a positive integer")
    cfg.write_text("methods:\n  kit_mean:\n    image_size: big\n")
    result, results = run_cli(*_base(kit_data), "--config", str(cfg))
    assert_user_error(result, results,
                      f"error: --config {cfg}: key methods.kit_mean.image_size='big': expected an integer")
    cfg.write_text("methods:\n  kit_mean:\n    imagesize: 24\n")
    result, results = run_cli(*_base(kit_data), "--config", str(cfg))
    assert_user_error(result, results, f"error: --config {cfg}: key methods.kit_mean.imagesize: unknown key "
                                       f"for kit_mean (did you mean image_size?)")


def test_seeds_outside_32_bits(kit_data, run_cli, assert_user_error):
    for spec, line in {
        str(2**32): f"error: --seed {2**32}: out of range (a seed is 0 .. {MAX}, i.e. below 2**32)",
        "-1": f"error: --seed -1: out of range (a seed is 0 .. {MAX}, i.e. below 2**32)",
        f"0,{2**40}": f"error: --seed '0,{2**40}': {2**40}: out of range (a seed is 0 .. {MAX}, i.e. below 2**32)",
    }.items():
        result, results = run_cli(*_base(kit_data), "--seed", spec)
        assert_user_error(result, results, line)


def test_yaml_syntax_encoding_and_duplicates(tmp_path, kit_data, run_cli, assert_user_error):
    cfg = tmp_path / "bad.yaml"
    cases = {
        b"image_size: 32\n  batch_size: 4\n":
            "invalid YAML at line 2, column 13: mapping values are not allowed here",
        b"methods: [kit_mean\n":
            "invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence at line 1, column 10)",
        b"image_size: 32\n# caf\xe9\n":
            "not UTF-8 text (byte 0xe9 at line 2, column 6); save the file as UTF-8",
        b"image_size: 32\nbatch_size: 4\nimage_size: 24\n":
            "invalid YAML at line 3, column 1: key 'image_size' given twice (first at line 1)",
        b"- image_size\n": "expected a mapping of key: value",
    }
    for text, problem in cases.items():
        cfg.write_bytes(text)
        result, results = run_cli(*_base(kit_data), "--config", str(cfg))
        assert_user_error(result, results, f"error: --config {cfg}: {problem}")


def test_unknown_method_under_methods(tmp_path, kit_data, run_cli, assert_user_error):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("methods:\n  kit_maen:\n    image_size: 24\n")
    result, results = run_cli(*_base(kit_data), "--config", str(cfg))
    assert_user_error(result, results, f"error: --config {cfg}: methods.kit_maen: unknown method "
                                       f"(did you mean kit_mean or kit_trained?)")
    # a registered method this run does not select is fine: one file serves several grids
    from adbench.run.runner import RunOptions, plan_run

    cfg.write_text("methods:\n  kit_scoreonly:\n    reduce: mean\n  kit_mean:\n    image_size: 24\n")
    plan = plan_run(RunOptions(method="kit_mean", dataset="kitgen", data_root=str(kit_data), config_file=str(cfg),
                               plugins=["adbench_testkit"], results=str(tmp_path / "plan"), progress=False))
    assert {job.method for job in plan.jobs} == {"kit_mean"}
    assert all(job.config["image_size"] == 24 for job in plan.jobs)


def test_plugin_that_raises_at_import(tmp_path, kit_data, monkeypatch, run_cli, assert_user_error):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "rel_plugin_value.py").write_text("raise ValueError('boom: no licence key\\nsecond line')\n")
    (tmp_path / "rel_plugin_exit.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "rel_plugin_dup.py").write_text(
        "from adbench.config import MethodConfig\nfrom adbench.detector import Detector\n"
        "from adbench.registry import register_method\n"
        "@register_method('mean_image')\nclass Other(Detector):\n    Config = MethodConfig\n")
    for module, line in {
        "rel_plugin_value": "error: --plugin rel_plugin_value: failed while importing "
                            "(ValueError: boom: no licence key)",
        "rel_plugin_exit": "error: --plugin rel_plugin_exit: failed while importing (SystemExit: 3)",
        "rel_plugin_dup": "error: --plugin rel_plugin_dup: method name 'mean_image' registered twice: by builtin "
                          "(adbench.methods.mean_image) and by rel_plugin_dup",
    }.items():
        result, results = run_cli(*_base(kit_data), "--plugin", module)
        assert_user_error(result, results, line)


@pytest.mark.parametrize("spec", ["", " , "])
def test_empty_method_is_an_error_not_all(kit_data, spec, run_cli, assert_user_error):
    """``--method ""`` needs runner.plan_run to stop turning "" into "all" (report, item 5)."""
    result, results = run_cli("--method", spec, "--dataset", "kitgen", "--data-root", str(kit_data))
    assert_user_error(result, results,
                      f"error: --method {spec!r}: no method name given (give a name, a comma list, or 'all')")
