"""``--precision``: under bf16 every neural method's networks compute in bf16 (each convolution
and linear layer, in training and in scoring), while what needs full precision stays float32
(predictions, losses); fp32 changes nothing; precision is part of a job's identity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import adbench_testkit
from adbench.config import resolve_config
from adbench.data import make_loader
from adbench.detector import RunContext
from adbench.jobs import Job
from adbench.registry import METHODS

TINY = adbench_testkit.TINY_CONFIGS
LAYERS = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = adbench_testkit.make_kit_data(tmp_path_factory.mktemp("kit"), categories=("obj_b",), n_train=6, size=64)
    return adbench_testkit.KitGen(str(root)).index("obj_b")


def _fit_and_score(name: str, precision: str, index) -> tuple[set, list]:
    """Fit and score ``name`` on the kit category; the output dtypes of every convolution and
    linear layer that ran, and the predictions."""
    cls = METHODS.get(name)
    config = resolve_config(cls.Config, cls.PROFILES, "quick", TINY[name], method=name)
    torch.manual_seed(0)
    detector = cls(config, RunContext(seed=0, weights="random", profile="quick", precision=precision))
    seen: set = set()

    def hook(module, args, output):
        if isinstance(module, LAYERS) and isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        pre = detector.preprocess()
        detector.fit(make_loader(index.train, pre, batch_size=int(getattr(config, "batch_size", 4)), train=True))
        predictions = [detector.predict(batch) for batch in make_loader(index.test, pre, batch_size=4, train=False)]
    finally:
        handle.remove()
    return seen, predictions


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_runs_every_layer_in_bf16_and_returns_float32(name, index):
    assert "bf16" in METHODS.get(name).precisions
    seen, predictions = _fit_and_score(name, "bf16", index)
    assert seen == {torch.bfloat16}, f"{name}: layer outputs in {seen}"
    for p in predictions:
        assert p.scores.dtype == torch.float32 and torch.isfinite(p.scores).all()
        if p.maps is not None:
            assert p.maps.dtype == torch.float32 and torch.isfinite(p.maps).all()


@pytest.mark.parametrize("name", ["draem", "patchcore"])
def test_fp32_is_plain_float32(name, index):
    seen, _ = _fit_and_score(name, "fp32", index)
    assert seen == {torch.float32}


def test_precision_is_part_of_the_job_identity():
    base = dict(method="m", dataset="d", data_root=None, categories=["c"], seed=0, protocol="single",
                profile="quick", config={}, config_hash="h")
    fp32, bf16 = Job(**base), Job(**base, precision="bf16")
    assert fp32.record_name("c") == "c__single__s0__h.json"  # unchanged by the option's arrival
    assert bf16.record_name("c") == "c__single__s0__h__bf16.json"
    assert fp32.key() != bf16.key() and fp32.identity() != bf16.identity()


def test_run_records_precision_and_fp32_only_methods_say_so(tmp_path):
    """A bf16 run is a new job beside the fp32 one; a method without networks runs in fp32
    with a note, and its record says fp32."""
    import json

    from adbench.run.runner import RunOptions, run

    root = adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",))
    common = dict(dataset="kitgen", data_root=str(root), results=str(tmp_path / "r"), plugins=["adbench_testkit"],
                  progress=False, profile="quick", device="cpu")
    notes = []
    assert run(RunOptions(method="kit_mean", **common)).exit_code == 0
    summary = run(RunOptions(method="kit_mean", precision="bf16", **common), log=notes.append)
    assert summary.exit_code == 0 and len(summary.plan.skipped_done) == 1  # fp32 job: the same job
    assert ("note: --precision bf16 does not apply to kit_mean (no networks under autocast): fp32 there, "
            "and their records say so") in notes
    records = [json.loads(p.read_text()) for p in (tmp_path / "r").rglob("*.json")]
    assert len(records) == 1 and records[0]["precision"] == "fp32" and records[0]["tf32"] is False
    assert records[0]["autocast"] is None and records[0]["cudnn_benchmark"] is False
    with pytest.raises(Exception, match="--precision 'fp8'"):
        run(RunOptions(method="kit_mean", precision="fp8", **common))
    assert np.isfinite(records[0]["metrics"]["image_auroc"])
