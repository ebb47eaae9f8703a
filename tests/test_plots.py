"""Every plot type renders from generated records (and saved predictions) to non-empty PNG and PDF."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from adbench.results import predictions
from adbench.cli import main
from adbench.results.store import write_json_atomic


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    n, s = 8, 32
    paths = []
    for i in range(n):
        p = images / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int8)
    masks = np.zeros((n, s, s), bool)
    masks[4:, 8:16, 8:16] = True
    for m_i, method in enumerate(("alpha", "beta")):
        for c_i, category in enumerate(("bottle", "carpet")):
            maps = rng.normal(0, 1, (n, s, s)) + (1.0 + m_i) * masks
            scores = maps.reshape(n, -1).max(1)
            name = f"{category}__single__s0__abc.json"
            record = {"method": method, "dataset": "mvtec", "category": category, "status": "ok",
                      "protocol": "single", "profile": "quick", "seed": 0, "geometry": "resize40-crop32",
                      "metrics": {"image_auroc": 0.8 + 0.05 * m_i + 0.02 * c_i, "pixel_auroc": 0.9 - 0.01 * c_i},
                      "fit_seconds": 10.0 * (1 + m_i), "test_throughput": 5.0 / (1 + m_i),
                      "host": {"cpu_model": "test cpu", "cpu_count": 2}, "record_name": name}
            rec_path = root / "results" / "mvtec" / method / name
            if method == "alpha":  # beta has no saved predictions: bars fall back to ranges
                arrays = {"scores": scores, "labels": labels, "maps": maps.astype(np.float16),
                          "masks_packed": np.packbits(masks.reshape(-1)), "masks_shape": np.array(masks.shape),
                          "paths": np.array(paths), "defect_types": np.array(["good"] * 4 + ["crack"] * 4)}
                record["predictions"] = predictions.save(rec_path, arrays).name
            write_json_atomic(rec_path, record)
    return root / "results"


def _is_image(path):
    assert path.stat().st_size > 1000
    if path.suffix == ".png":
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    else:
        assert path.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize("args", [
    ["heatmap", "--metric", "image_auroc"],
    ["bars", "--metric", "image_auroc"],
    ["bars", "--metric", "pixel_auroc"],
    ["cost", "--x", "test_throughput"],
    ["gallery", "-m", "alpha", "-c", "bottle", "-n", "3"],
    ["gallery", "-m", "alpha", "-c", "carpet", "--sample", "005.png"],
])
def test_plot_renders(store, tmp_path, args):
    out = tmp_path / "fig"
    result = CliRunner().invoke(main, ["plot", *args, "--results", str(store), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for suffix in (".png", ".pdf"):
        _is_image(out.with_suffix(suffix))


def test_same_records_give_the_same_figure_bytes(store, tmp_path):
    """No creation date in PNG or PDF: a committed figure changes only when its records do."""
    made = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["plot", "bars", "--metric", "image_auroc", "--results", str(store),
                                           "--out", str(out)])
        assert result.exit_code == 0, result.output
        made.append([out.with_suffix(s).read_bytes() for s in (".png", ".pdf")])
    assert made[0] == made[1]
    assert b"CreationDate" not in made[0][1]


def test_gallery_picks_worst_scored():
    arrays = {"scores": np.array([0.1, 0.9, 0.2, 0.8]), "labels": np.array([1, 0, 1, 0]),
              "paths": np.array(["a", "b", "c", "d"])}
    from adbench.reporting.plots import pick_samples

    assert pick_samples(arrays, 3) == [0, 1, 2]  # weakest anomalous, strongest normal, ...
    assert pick_samples(arrays, 1, paths=["d"]) == [3]


def test_gallery_without_predictions_is_a_user_error(store, tmp_path):
    result = CliRunner().invoke(main, ["plot", "gallery", "-m", "beta", "--results", str(store),
                                       "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "no record with saved predictions" in result.output


def test_compare_cli(store, tmp_path):
    # beta has no saved predictions; alpha against itself: no resolvable difference
    result = CliRunner().invoke(main, ["compare", "alpha", "alpha", "--results", str(store), "-d", "mvtec",
                                       "--n-boot", "200"])
    assert result.exit_code == 0, result.output
    assert "+0.0000" in result.output and "no resolvable difference" in result.output
    result = CliRunner().invoke(main, ["compare", "alpha", "beta", "--results", str(store), "-d", "mvtec"])
    assert result.exit_code == 2


def test_efficiency_and_ci_tables(store):
    eff = CliRunner().invoke(main, ["table", "--results", str(store), "--efficiency"])
    assert eff.exit_code == 0, eff.output
    assert "fit s" in eff.output and "test cpu x2" in eff.output and "GFLOPs/img" in eff.output
    ci = CliRunner().invoke(main, ["table", "--results", str(store), "--ci"])
    assert ci.exit_code == 0, ci.output
    alpha = [l for l in ci.output.splitlines() if l.startswith("| alpha ")]
    beta = [l for l in ci.output.splitlines() if l.startswith("| beta ")]
    assert len(alpha) == 2 and all(l.count("[") == 2 for l in alpha)  # image and pixel intervals
    assert all("no saved predictions" in l for l in beta)
