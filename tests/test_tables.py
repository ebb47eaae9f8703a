"""Tables from records alone: pivot, means, kinds, n/a footnotes, settings never mixed, formats."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from adbench.reporting.tables import build_tables, long_frame, render, render_long


def rec(method, category, value, *, kind="object", seed=0, protocol="single", profile="quick",
        config_hash="aaaa", status="ok", pixel=None, reason=None, geometry="resize256", dataset="mvtec",
        training=None):
    metrics = {"image_auroc": value, "pixel_auroc": pixel}
    undefined = {}
    if value is None:
        undefined["image_auroc"] = reason or "test set has no anomalous images"
    if pixel is None:
        undefined["pixel_auroc"] = reason or "method produces no anomaly maps"
    return {"method": method, "dataset": dataset, "category": category, "category_kind": kind, "seed": seed,
            "protocol": protocol, "profile": profile, "config_hash": config_hash, "weights": None,
            "status": status, "error": "boom" if status != "ok" else None, "geometry": geometry,
            "metrics": metrics, "undefined": undefined, "training_categories": training or [category]}


def test_pivot_means_kinds_and_seeds():
    records = [
        rec("a", "carpet", 0.8, kind="texture", pixel=0.9),
        rec("a", "grid", 0.6, kind="texture", pixel=0.7),
        rec("a", "bottle", 1.0, pixel=0.95),
        rec("b", "carpet", 0.5, kind="texture", seed=0),
        rec("b", "carpet", 0.7, kind="texture", seed=1),
        rec("b", "grid", 0.9, kind="texture", seed=0),
        rec("b", "grid", 0.9, kind="texture", seed=1),
        rec("b", "bottle", 0.4, seed=0),
        rec("b", "bottle", 0.6, seed=1),
    ]
    image, pixel = build_tables(records)
    df = image.frame
    assert list(df.index) == ["bottle", "carpet", "grid", "mean", "texture mean", "object mean"]
    assert list(df.columns) == ["a", "b [1]"]
    assert df.loc["carpet", "b [1]"] == "0.600"  # mean over 2 seeds
    assert df.loc["mean", "a"] == "0.800" and df.loc["texture mean", "a"] == "0.700"
    assert df.loc["object mean", "a"] == "1.000" and df.loc["mean", "b [1]"] == "0.667"
    assert image.footnotes[0] == "profile: quick"
    assert "[1] b: mean over 2 seeds (0, 1)" in image.footnotes
    # b has no maps: n/a with the reason, and no mean invented
    assert pixel.frame.loc["bottle", "b [1]"] == "n/a [2]"
    assert "[2] n/a: method produces no anomaly maps" in pixel.footnotes
    assert pixel.frame.loc["mean", "b [1]"] == "n/a"


def test_settings_are_never_mixed():
    records = [
        rec("uniad", "bottle", 0.9, protocol="unified"),
        rec("uniad", "bottle", 0.95, protocol="single"),
        rec("pc", "bottle", 0.99, profile="paper", geometry="resize256-crop224", pixel=0.9),
        rec("pc", "bottle", 0.97, profile="quick", pixel=0.8),
        rec("x", "bottle", 0.7, config_hash="aaaa"),
        rec("x", "bottle", 0.8, config_hash="bbbb"),
    ]
    image, pixel = build_tables(records)
    cols = list(image.frame.columns)
    assert cols == ["pc [paper]", "pc [quick]", "uniad", "uniad (unified)", "x {cfg aaaa}", "x {cfg bbbb}"]
    # unified models over different category sets are different columns too
    two = [rec("u", "bottle", 0.9, protocol="unified", training=["bottle", "cable"]),
           rec("u", "bottle", 0.7, protocol="unified", training=["bottle", "cable", "grid"])]
    (t,) = build_tables(two, metrics=["image_auroc"])
    assert sorted(t.frame.loc["bottle"]) == ["0.700", "0.900"]
    assert all(c.startswith("u (unified) [") for c in t.frame.columns)
    assert image.frame.loc["bottle", "uniad (unified)"] == "0.900"
    assert not any(n.startswith("profile:") for n in image.footnotes)  # profiles differ...
    assert "profiles differ between columns: pc [paper]: paper; pc [quick]: quick; uniad: quick" in image.footnotes[0]
    assert any("different evaluation geometries" in n and "resize256-crop224" in n for n in pixel.footnotes)


def test_undefined_and_failed_cells():
    records = [
        rec("a", "bottle", 0.9, pixel=0.8),
        rec("a", "good_only", None, pixel=None, reason="test set has no anomalous images"),
        rec("a", "broken", None, status="failed"),
    ]
    (image,) = build_tables(records, metrics=["image_auroc"])
    df = image.frame
    assert df.loc["good_only", "a"] == "n/a [1]" and df.loc["broken", "a"] == "failed"
    assert df.loc["mean", "a"] == "0.900 [2]"
    assert image.footnotes[1:] == ["[1] n/a: test set has no anomalous images",
                                   "[2] a mean: over 1 of 3 categories (the others undefined or failed)"]


def test_formats_and_long():
    records = [rec("a", "bottle", 0.9, pixel=0.8), rec("b", "bottle", 0.7, pixel=None),
               rec("a", "tile", 0.5, kind="texture", pixel=0.6, dataset="other")]
    tables = build_tables(records)
    assert [t.title for t in tables] == ["mvtec: image_auroc", "mvtec: pixel_auroc",
                                         "other: image_auroc", "other: pixel_auroc"]
    md = render(tables, "md")
    assert "### mvtec: image_auroc" in md and "| bottle     | 0.900 | 0.700 |" in md
    csv = render(tables[:1], "csv")
    body = pd.read_csv(io.StringIO(csv), comment="#", index_col=0)
    assert body.loc["bottle", "a"] == pytest.approx(0.9)
    latex = render(tables[:1], "latex")
    assert "\\toprule" in latex and "bottle" in latex
    html = render(tables[:1], "html")
    assert "<table" in html and "<li>profile: quick</li>" in html
    long = pd.read_csv(io.StringIO(render_long(records, ["image_auroc", "pixel_auroc"])))
    assert len(long) == 6 and set(long.columns) >= {"method", "dataset", "category", "metric", "value"}
    row = long[(long.method == "b") & (long.metric == "pixel_auroc")].iloc[0]
    assert pd.isna(row.value) and row.reason == "method produces no anomaly maps"
    assert len(long_frame(records)) == 6
    with pytest.raises(Exception, match="--format"):
        render(tables, "xls")
