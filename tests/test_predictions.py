"""--save-predictions: each record's test outputs are saved beside it, and ``adbench evaluate``
recomputes the recorded metrics from them (images exactly, pixels up to float16 maps)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import adbench_testkit
from adbench.results import predictions
from adbench.cli import main
from adbench.run.runner import RunOptions, run
from adbench.results.store import Store


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    root = adbench_testkit.make_kit_data(tmp / "data", categories=("tex_a",))
    opts = RunOptions(method="kit_mean", dataset="kitgen", data_root=str(root), results=str(tmp / "results"),
                      plugins=["adbench_testkit"], progress=False, save_predictions=True)
    summary = run(opts, log=lambda m: None)
    assert summary.n_ok == 1
    return tmp / "results"


def test_arrays_saved_beside_the_record(saved):
    (record,) = list(Store(saved).records())
    assert record["predictions"] == record["record_name"].replace(".json", ".npz")
    arrays = predictions.load(record)
    n = record["counts"]["n_images"]
    assert arrays["scores"].shape == (n,) and arrays["scores"].dtype == np.float64
    assert arrays["maps"].dtype == np.float16 and arrays["maps"].shape[0] == n
    assert arrays["masks"].shape == arrays["maps"].shape and arrays["masks"].dtype == bool
    assert len(arrays["paths"]) == n and all(p.endswith(".png") for p in arrays["paths"])
    assert set(arrays["labels"].tolist()) == {0, 1}
    assert "_predictions" not in json.dumps(record)
    # FLOPs of one predict image are recorded (kit_mean: no matmul/conv, so 0 is the right count)
    assert record["predict_flops_per_image"] is not None


def test_recomputed_equals_recorded(saved):
    (record,) = list(Store(saved).records())
    rows = {r["metric"]: r for r in predictions.compare(record, predictions.load(record))}
    for metric in ("image_auroc", "image_ap", "image_f1_max"):
        assert rows[metric]["recomputed"] == pytest.approx(record["metrics"][metric], abs=1e-12)
    for metric in ("pixel_auroc", "aupro", "pixel_ap"):
        assert rows[metric]["abs_diff"] < 1e-3


def test_evaluate_cli(saved, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--results", str(saved)])
    assert result.exit_code == 0, result.output
    assert "image_auroc" in result.output and "1 record(s) re-evaluated" in result.output
    empty = CliRunner().invoke(main, ["evaluate", "--results", str(tmp_path)])
    assert empty.exit_code == 2 and "no records with saved predictions" in empty.output
    # a tampered record is caught
    (path,) = [p for p in saved.rglob("*.json")]
    record = json.loads(path.read_text())
    record["metrics"]["image_auroc"] = 0.123
    path.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["evaluate", "--results", str(saved)])
    assert result.exit_code == 1
    empty = CliRunner().invoke(main, ["evaluate", "--results", str(tmp_path)])
    assert empty.exit_code == 2 and "no records with saved predictions" in empty.output


def test_map_maxima_survive_float16_maps():
    """Saturated maps (maxima 0.9995x) collapse to one float16 value; the saved full-precision
    maxima keep the map-max ranking, so a recompute matches the live evaluation."""
    from adbench.evaluation.streaming import StreamingEvaluator

    maxima = np.array([0.99950, 0.99951, 0.99953, 0.99954], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    maps = np.zeros((4, 8, 8), dtype=np.float32)
    maps[:, 3, 3] = maxima
    assert len(set(maps.astype(np.float16).reshape(4, -1).max(1).tolist())) < 4  # float16 ties them
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[2:, 3, 3] = True
    live = StreamingEvaluator()
    live.update(scores=np.arange(4.0), labels=labels, maps=maps, masks=masks)
    collector = predictions.Collector()
    collector.update(np.arange(4.0), labels, maps, masks, [f"{i}.png" for i in range(4)], ["good"] * 2 + ["x"] * 2)
    arrays = collector.arrays()
    arrays["masks"] = masks
    again = predictions.recompute(arrays)["values"]
    expected = live.compute().to_dict()["values"]
    assert expected["image_auroc_mapmax"] == 1.0
    assert again["image_auroc_mapmax"] == expected["image_auroc_mapmax"]
    without = dict(arrays)
    without.pop("map_max")  # files saved before the maxima were kept: float16 ties show
    assert predictions.recompute(without)["values"]["image_auroc_mapmax"] < 1.0


def test_maps_beyond_float16_range_are_saved_as_float32():
    """float16 overflows to inf above 65504: such a category's maps are kept as float32."""
    from adbench.results.predictions import Collector

    c = Collector()
    small = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    c.update(np.zeros(2), np.zeros(2), small, np.zeros((2, 8, 8), bool), ["a", "b"], ["good", "good"])
    huge = small * 1e6
    c.update(np.zeros(2), np.ones(2), huge, np.zeros((2, 8, 8), bool), ["c", "d"], ["x", "x"])
    maps = c.arrays()["maps"]
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert np.array_equal(maps[2:], huge) and np.allclose(maps[:2], small, rtol=1e-3)
    c2 = Collector()
    c2.update(np.zeros(2), np.zeros(2), small, np.zeros((2, 8, 8), bool), ["a", "b"], ["good", "good"])
    assert c2.arrays()["maps"].dtype == np.float16
