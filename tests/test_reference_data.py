"""The published numbers themselves (``results/reference/*.csv``), not just their form:

(a) every printed mean (``mean`` / ``texture_mean`` / ``object_mean``) that can be recomputed from
    its table's own per-category rows agrees with them to rounding, except the disagreements listed
    in ``TOLERATED`` (each with its reason; the list must stay exact);
(b) every row of every CSV: known metric, a fraction in [0, 1], an allowed role, a note where the
    role needs one, one source / paper name per (method, setting) of a file;
(c) ToCoAD Table 1's RD4AD and CFLOW-AD cells are stored as the metrics they are (pixel AUROC /
    PRO, never image AUROC), and Table 3's "Ours + Perlin" BTAD row is there;
(d) our Reverse Distillation bottle image AUROC is paired only with an RD4AD image-AUROC number,
    or with nothing, never with a pixel number.
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

from adbench.registry import DATASETS
from adbench.reporting import reference as ref
from adbench.results.records import METRIC_KEYS

MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")  # the papers' "texture" average; the rest are objects
T1 = "tocoad_table1_mvtec.csv"

# (file, method, paper_name, mean category, metric) -> why its printed mean may disagree with its rows
TOLERATED = {
    (T1, "reverse_distillation", "RD4AD", "object_mean", "pixel_auroc"):
        "the seed's RD4AD object mean: ToCoAD prints 98.81, but its own RD4AD object cells average 97.86 "
        "(first numbers, pixel AUROC) and 93.37 (second numbers, PRO); kept as printed, role=unverified",
    (T1, "reverse_distillation", "RD4AD", "texture_mean", "pixel_auroc"):
        "ToCoAD prints 95.80 as RD4AD's texture pixel AUROC; its RD4AD texture cells average 97.70 (pixel "
        "AUROC) and 95.42 (second numbers), RD4AD's own texture PRO is 95.0; role=unverified",
    ("tocoad_table2_visa.csv", "fastflow", "FastFlow", "mean", "image_auroc"):
        "the seed prints 81.25 as FastFlow's VisA image AUROC average, its 12 cells average 82.16; kept as printed",
}
# Mean rows that cannot be recomputed although their (method, setting) has per-category rows of
# other metrics, and are still compared (role main): why that is right.
MAIN_WITHOUT_ROWS = {
    (T1, "reverse_distillation", "RD4AD", "mean", "image_auroc"):
        "ToCoAD's RD4AD total average 98.46 is RD4AD's own image AUROC mean (98.5, RD4AD Table 1); ToCoAD's "
        "RD4AD cells are pixel AUROC / PRO, so no image AUROC cells exist to average",
}


@pytest.fixture(scope="module")
def frame():
    return ref.load()


@pytest.fixture(scope="module")
def categories():
    DATASETS.load()
    return {n: list(getattr(DATASETS.get(n), "KNOWN_CATEGORIES", {}) or {}) for n in DATASETS.names()}


def decimals(value: float) -> int:
    """Decimals of a fraction printed as a percent: 0.9456 -> 2 (94.56), 0.91 -> 0 (91)."""
    pct = round(value * 100, 6)
    return next(d for d in range(7) if math.isclose(pct, round(pct, d), abs_tol=1e-7))


def members(dataset_categories: list[str], mean_category: str) -> list[str]:
    if mean_category == "mean":
        return list(dataset_categories)
    textures = mean_category == "texture_mean"
    return [c for c in dataset_categories if (c in MVTEC_TEXTURES) == textures]


def mean_checks(frame: pd.DataFrame, categories: dict) -> tuple[list, list]:
    """(key, printed, recomputed, tolerance) of every printed mean with its table's rows, and the
    keys of main mean rows with no rows of their metric where the (method, setting) has others."""
    checked, unrecomputable = [], []
    for (file, method, setting), group in frame.groupby(["file", "method", "setting"], sort=True):
        per_cat = group[~group["category"].isin(ref.MEAN_CATEGORIES)]
        for metric, rows in group.groupby("metric"):
            cells = dict(zip(rows["category"], rows["value"]))
            for _, row in rows[rows["category"].isin(ref.MEAN_CATEGORIES)].iterrows():
                key = (file, method, row.get("paper_name", ""), row["category"], metric)
                need = members(categories[row["dataset"]], row["category"])
                if not any(c in cells for c in need):
                    if len(per_cat) and row["role"] == "main":
                        unrecomputable.append(key)
                    continue
                assert all(c in cells for c in need), f"{key}: mean printed over categories it does not list"
                recomputed = sum(cells[c] for c in need) / len(need)
                cell_decimals = max(decimals(cells[c]) for c in need)
                # half a unit of the mean's printed precision plus half a unit of the cells' (a paper
                # may average unrounded cells, or truncate: ToCoAD does, within the same bound)
                tol = (0.5 * 10 ** -decimals(row["value"]) + 0.5 * 10 ** -cell_decimals) / 100 + 1e-9
                checked.append((key, row["value"], recomputed, tol))
    return checked, unrecomputable


# ----------------------------------------------------------------------------------------- (a)
def test_printed_means_follow_from_their_rows(frame, categories):
    checked, _ = mean_checks(frame, categories)
    assert len(checked) > 100  # every per-category table with means takes part
    bad = {key: (printed, recomputed) for key, printed, recomputed, tol in checked if abs(printed - recomputed) > tol}
    unexpected = {k: v for k, v in bad.items() if k not in TOLERATED}
    assert not unexpected, "printed means that do not follow from their rows (fix, or add to TOLERATED " \
                           f"with the reason): {unexpected}"
    stale = set(TOLERATED) - set(bad)
    assert not stale, f"TOLERATED lists means that now agree with their rows or are gone: {stale}"


def test_means_without_rows_of_their_metric_are_not_compared_unless_listed(frame, categories):
    _, unrecomputable = mean_checks(frame, categories)
    assert set(unrecomputable) == set(MAIN_WITHOUT_ROWS)


def test_the_seed_rd4ad_object_mean_is_the_known_disagreement(frame, categories):
    checked, _ = mean_checks(frame, categories)
    (hit,) = [c for c in checked if c[0] == (T1, "reverse_distillation", "RD4AD", "object_mean", "pixel_auroc")]
    assert hit[1] == pytest.approx(0.9881) and hit[2] == pytest.approx(0.9786)


# ----------------------------------------------------------------------------------------- (b)
def test_every_row_is_well_formed(frame, categories):
    assert ref.validate(frame, categories) == []
    for _, row in frame.iterrows():
        where = f"{row['file']}: {row['method']}/{row['category']}/{row['metric']}"
        assert row["metric"] in METRIC_KEYS, where
        assert isinstance(row["value"], float) and 0.0 <= row["value"] <= 1.0, where
        assert row["role"] in ref.ROLES, where
        if row["role"] in ref.NOTE_REQUIRED:
            assert row["note"].strip(), f"{where}: role {row['role']} without a note"


# a file is one source; these carry a second one, for the reason given
EXTRA_SOURCES = {("cutpaste_table1_mvtec.csv", "seed 003 CutPaste Sec. 4.1 text"):
                 "the 5-model ensemble's 96.1 mean is printed in the text, not in Table 1"}


def test_method_setting_and_source_are_consistent_within_a_file(frame):
    for file, rows in frame.groupby("file"):
        assert rows["dataset"].nunique() == 1, f"{file}: several datasets"
        extra = {s for s in rows["source"].unique() if (file, s) in EXTRA_SOURCES}
        assert rows["source"].nunique() - len(extra) == 1, f"{file}: sources {sorted(rows['source'].unique())}"
        for (method, setting), group in rows.groupby(["method", "setting"]):
            assert group["paper_name"].nunique() == 1, f"{file}: {method} / {setting}: several paper names"
            assert group["source"].nunique() == 1, f"{file}: {method} / {setting}: several sources"
            assert not group.duplicated(["category", "metric"]).any(), f"{file}: {method} / {setting}: duplicates"


def test_per_category_metrics_cover_every_category(frame, categories):
    """A (method, setting, metric) of a file has all of its dataset's categories or none: a cell
    relabelled to another metric must not leave a half-filled column behind."""
    for (file, method, setting, metric), group in frame.groupby(["file", "method", "setting", "metric"]):
        cats = set(group["category"]) - set(ref.MEAN_CATEGORIES)
        if cats:
            assert cats == set(categories[group["dataset"].iloc[0]]), (file, method, metric, sorted(cats))


# ----------------------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("method", ["reverse_distillation", "cflow_ad"])
def test_tocoad_table1_rd4ad_and_cflow_cells_are_pixel_auroc_and_pro(frame, categories, method):
    rows = frame[(frame["file"] == T1) & (frame["method"] == method) & ~frame["category"].isin(ref.MEAN_CATEGORIES)]
    assert not (rows["metric"] == "image_auroc").any()
    for metric in ("pixel_auroc", "aupro"):
        assert sorted(rows.loc[rows["metric"] == metric, "category"]) == sorted(categories["mvtec"])
    bottle = rows[rows["category"] == "bottle"].set_index("metric")
    expected = {"reverse_distillation": (0.987, 0.966), "cflow_ad": (0.989, 0.968)}[method]
    assert (bottle.loc["pixel_auroc", "value"], bottle.loc["aupro", "value"]) == pytest.approx(expected)
    assert set(bottle["role"]) == {"main"}  # both bottle cells were checked against the method's paper


def test_rd4ad_means_are_judged_one_by_one(frame):
    rows = frame[(frame["file"] == T1) & (frame["method"] == "reverse_distillation")
                 & frame["category"].isin(ref.MEAN_CATEGORIES)]
    roles = {(r.category, r.metric): r.role for r in rows.itertuples()}
    assert roles[("mean", "image_auroc")] == roles[("mean", "pixel_auroc")] == "main"  # RD4AD's own 98.5 / 97.8
    assert {roles[(c, m)] for c in ("texture_mean", "object_mean")
            for m in ("image_auroc", "pixel_auroc")} == {"unverified"}


def test_btad_ours_plus_perlin_row_is_there(frame):
    rows = frame[(frame["file"] == "tocoad_table3_btad.csv") & (frame["paper_name"] == "ToCoAD + Perlin")]
    assert set(rows["method"]) == {"tocoad"} and set(rows["metric"]) == {"pixel_auroc_anomalous"}  # ToCoAD Sec. 4.1.2
    assert set(rows["role"]) == {"main"}
    assert dict(zip(rows["category"], rows["value"])) == pytest.approx(
        {"01": 0.974, "02": 0.966, "03": 0.991, "mean": 0.977})
    assert rows["setting"].str.startswith("Perlin anomaly generator").all()


# ----------------------------------------------------------------------------------------- (d)
RD_BOTTLE = {"method": "reverse_distillation", "dataset": "mvtec", "category": "bottle", "status": "ok",
             "protocol": "single", "profile": "quick", "weights_tag": "imagenet:lite0", "geometry": "resize256",
             "config": {"backbone": "tf_efficientnet_lite0"}, "metrics": {"image_auroc": 1.0, "pixel_auroc": 0.98}}


@pytest.mark.parametrize("include_ablation", [False, True])
def test_rd_image_auroc_is_paired_only_with_an_rd4ad_image_number(frame, include_ablation):
    tables = {t.metric.split()[0]: t for t in
              ref.comparison_tables([RD_BOTTLE], frame, ["image_auroc", "pixel_auroc"],
                                    include_ablation=include_ablation)}
    compared = frame[frame["role"].isin(ref.compared_roles(include_ablation))
                     & (frame["method"] == "reverse_distillation") & (frame["dataset"] == "mvtec")]

    def allowed(metric):
        rows = compared[(compared["metric"] == metric) & (compared["category"] == "bottle")]
        return {f"{v:.3f}" for v in rows["value"]}

    image = tables["image_auroc"].frame.reset_index() if "image_auroc" in tables else pd.DataFrame()
    paired = set(image.loc[image["category"] == "bottle", "paper"]) if len(image) else set()
    assert paired <= allowed("image_auroc")
    assert "0.987" not in paired  # RD4AD's bottle pixel AUROC, once stored as image AUROC
    pixel = tables["pixel_auroc"].frame.reset_index()
    assert "0.987" in set(pixel.loc[pixel["category"] == "bottle", "paper"])


def test_unverified_and_test_selected_rows_load_but_are_never_compared(tmp_path, categories):
    common = "method,dataset,category,metric,value,source,setting"
    (tmp_path / "a.csv").write_text(f"{common}\nreverse_distillation,mvtec,bottle,image_auroc,0.99,T1,default\n")
    (tmp_path / "b.csv").write_text(
        f"{common},role,note\n"
        "reverse_distillation,mvtec,bottle,image_auroc,0.95,T2,other,unverified,metric unclear\n"
        "reverse_distillation,mvtec,bottle,image_auroc,0.97,T3,test-picked,test_selected,best test checkpoint\n"
        "reverse_distillation,mvtec,bottle,image_auroc,0.96,T4,abl,ablation,\n")
    loaded = ref.load(tmp_path)
    assert list(loaded["note"]) == ["", "metric unclear", "best test checkpoint", ""]  # a.csv has no note column
    assert ref.validate(loaded, categories) == []
    for include_ablation, expected in ((False, ["0.990"]), (True, ["0.960", "0.990"])):
        (table,) = ref.comparison_tables([RD_BOTTLE], loaded, ["image_auroc"], include_ablation=include_ablation)
        assert sorted(table.frame["paper"]) == expected
    no_note = loaded.copy()
    no_note.loc[1, "note"] = ""
    problems = ref.validate(no_note, categories)
    assert len(problems) == 1 and "role unverified needs a note" in problems[0]
