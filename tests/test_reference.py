"""Published numbers: the committed CSVs are well-formed, spot values match the sources, and
``table --reference`` puts ours next to the paper's with both settings."""
from __future__ import annotations

import pandas as pd
import pytest

from adbench.reporting import reference as ref
from adbench.registry import DATASETS


@pytest.fixture(scope="module")
def frame():
    return ref.load()


def known_categories():
    DATASETS.load()
    return {n: list(getattr(DATASETS.get(n), "KNOWN_CATEGORIES", {}) or {}) for n in DATASETS.names()}


def test_committed_reference_is_well_formed(frame):
    assert ref.validate(frame, known_categories()) == []
    files = set(frame["file"])
    assert {"patchcore_official.csv", "method_means.csv", "tocoad_table1_mvtec.csv", "tocoad_table2_visa.csv",
            "tocoad_table3_btad.csv", "cutpaste_table1_mvtec.csv", "cutpaste_table2_mvtec_pixel.csv"} <= files
    # the ablation tables (seed 002 T4-9, seed 003 T4/5/7/8, seed 000 T1) carry role=ablation, the rest main
    ablation_files = {f for f in files if "ablation" in f or f.startswith("supplement000_")}
    assert len(ablation_files) == 11
    assert set(frame.loc[frame["file"].isin(ablation_files), "role"]) == {"ablation"}
    assert set(frame.loc[~frame["file"].isin(ablation_files), "role"]) <= {"main", "unverified", "test_selected"}
    # every MVTec category of the per-category sources is there
    mv = set(DATASETS.get("mvtec").KNOWN_CATEGORIES)
    for f in ("patchcore_official.csv", "tocoad_table1_mvtec.csv", "cutpaste_table1_mvtec.csv"):
        assert mv <= set(frame.loc[frame["file"] == f, "category"])


@pytest.mark.parametrize("file, method, paper_name, category, metric, value", [
    ("patchcore_official.csv", "patchcore", "PatchCore", "bottle", "pixel_auroc", 0.985),
    ("patchcore_official.csv", "patchcore", "PatchCore", "transistor", "pixel_auroc", 0.961),
    ("tocoad_table1_mvtec.csv", "tocoad", "ToCoAD + Perlin", "mean", "pixel_auroc_anomalous", 0.9821),
    ("tocoad_table1_mvtec.csv", "reverse_distillation", "RD4AD", "transistor", "aupro", 0.78),  # PRO (issue 24)
    ("tocoad_table1_mvtec.csv", "tocoad", "ToCoAD + CutPaste", "wood", "image_auroc", 0.998),
    ("tocoad_table2_visa.csv", "draem", "DRAEM", "pcb1", "image_auroc", 0.476),
    ("tocoad_table3_btad.csv", "vt_adl", "VT-ADL", "03", "pixel_auroc", 0.77),
    ("cutpaste_table1_mvtec.csv", "cutpaste", "CutPaste (3-way)", "bottle", "image_auroc", 0.983),
    ("cutpaste_table1_mvtec.csv", "cutpaste", "CutPaste (3-way)", "mean", "image_auroc", 0.952),
    ("cutpaste_table1_mvtec.csv", "scar", "Scar", "screw", "image_auroc", 0.113),
    ("cutpaste_table2_mvtec_pixel.csv", "cutpaste_patch", "CutPaste (3-way)", "mean", "pixel_auroc", 0.96),
    ("tocoad_table4_ablation_ncl_layers.csv", "tocoad", "ToCoAD (Layer 2+3+4)", "mean", "image_auroc", 0.9808),
    ("tocoad_table5_ablation_stages.csv", "tocoad", "ToCoAD (NCL only)", "mean", "pixel_auroc_anomalous", 0.9794),
    ("tocoad_table6_ablation_loss.csv", "tocoad", "ToCoAD (lambda 0.8, CE)", "mean", "image_auroc", 0.9818),
    ("tocoad_table7_ablation_generator.csv", "tocoad", "ToCoAD + NSA", "mean", "pixel_auroc_anomalous", 0.9796),
    ("tocoad_table8_ablation_concat.csv", "tocoad", "ToCoAD (concatenation)", "mean", "image_auroc", 0.9856),
    ("tocoad_table9_ablation_contrastive.csv", "tocoad", "ToCoAD w/ BYOL", "mean", "pixel_auroc_anomalous", 0.9808),
    ("cutpaste_table4_ablation_cutout_variants.csv", "confetti", "Confetti", "texture_mean", "image_auroc", 0.801),
    ("cutpaste_table5_ablation_binary_vs_3way.csv", "cutpaste", "Binary (Union)", "mean", "image_auroc", 0.943),
    ("cutpaste_table7_ablation_optimisation.csv", "cutpaste", "CutPaste (3-way), lr 0.003", "object_mean",
     "image_auroc", 0.939),
    ("cutpaste_table8_ablation_augmentation.csv", "cutpaste", "CutPaste (3-way), patch size 0.2", "texture_mean",
     "image_auroc", 0.958),
    ("supplement000_table1_synthetic_proportion.csv", "augmented_patch_ssl", "Ours (seed 000 supplement, unnamed), 1:0",
     "object_mean", "image_auroc", 0.851),
])
def test_spot_values_match_the_sources(frame, file, method, paper_name, category, metric, value):
    hit = frame[(frame["file"] == file) & (frame["method"] == method) & (frame["paper_name"] == paper_name)
                & (frame["category"] == category) & (frame["metric"] == metric)]
    assert len(hit) == 1 and hit["value"].iloc[0] == pytest.approx(value)


def test_validate_catches_bad_rows(frame):
    bad = frame.head(3).copy()
    bad.loc[bad.index[0], "value"] = 98.5          # percent, not a fraction
    bad.loc[bad.index[1], "category"] = "botle"     # unknown category
    bad = pd.concat([bad, bad.tail(1)])             # duplicate
    problems = ref.validate(bad, known_categories())
    assert any("not a fraction" in p for p in problems)
    assert any("'botle'" in p for p in problems)
    assert any(p.startswith("duplicate") for p in problems)
    assert ref.validate(bad.drop(columns=["setting"]), known_categories()) == ["missing column(s): setting"]
    bad_role = frame.head(2).copy()
    bad_role.loc[bad_role.index[0], "role"] = "headline"
    role_problems = [p for p in ref.validate(bad_role, known_categories()) if " role " in p]
    assert len(role_problems) == 1 and "role 'headline' not one of main, ablation" in role_problems[0]


def test_ablation_rows_load_but_stay_out_of_the_comparison_unless_asked(tmp_path):
    """A CSV without a ``role`` column is main; ablation rows are hidden from ``comparison_tables``
    (and ``table --reference``) unless ``include_ablation`` (``--reference-all``)."""
    common = "method,dataset,category,metric,value,source,setting"
    (tmp_path / "main.csv").write_text(f"{common}\npatchcore,mvtec,bottle,image_auroc,1.0,paper T1,default\n")
    (tmp_path / "abl.csv").write_text(f"{common},role\npatchcore,mvtec,bottle,image_auroc,0.9,paper T4,"
                                      f"coreset 1%,ablation\npatchcore,mvtec,bottle,pixel_auroc,0.95,paper T4,"
                                      f"coreset 1%,\n")
    frame = ref.load(tmp_path)
    assert list(frame["role"]) == ["ablation", "main", "main"]  # files sorted: abl.csv, main.csv; empty = main
    assert ref.validate(frame, known_categories()) == []
    record = {"method": "patchcore", "dataset": "mvtec", "category": "bottle", "status": "ok", "profile": "quick",
              "geometry": "resize256", "config": {}, "metrics": {"image_auroc": 0.97}}

    def papers(**kw):
        (table,) = ref.comparison_tables([record], frame, ["image_auroc"], **kw)
        return sorted(table.frame["paper"]), " ".join(table.footnotes)

    values, notes = papers()
    assert values == ["1.000"] and "paper T4" not in notes
    values, notes = papers(include_ablation=True)
    assert values == ["0.900", "1.000"] and "paper T4: coreset 1%" in notes


def test_cli_reference_all_adds_the_ablation_settings():
    from click.testing import CliRunner

    from adbench.cli import main

    results = ref.default_dir().parent
    if not list((results / "mvtec" / "tocoad").glob("bottle__*.json")):
        pytest.skip("committed tocoad bottle record not present")
    args = ["table", "--results", str(results), "--dataset", "mvtec", "--metric", "image_auroc"]
    main_only = CliRunner().invoke(main, args + ["--reference"])
    everything = CliRunner().invoke(main, args + ["--reference-all"])
    assert main_only.exit_code == 0 and everything.exit_code == 0, main_only.output + everything.output
    assert "ToCoAD Table 1" in main_only.output and "ablation" not in main_only.output
    # the committed record is the full two-stage ToCoAD (mode perlin): Table 5's full-method row
    # is its ablation setting; "NCL only" (mode perlin+stages=ncl) is another detector (issue 25)
    assert "ToCoAD Table 5 ablation: DNP + NCL" in everything.output
    assert "ToCoAD Table 5 ablation: NCL only" not in everything.output
    assert "CutPaste Table 8: maximum patch area ratio 0.2" in everything.output


def test_comparison_shows_both_settings(frame):
    record = {"method": "patchcore", "dataset": "mvtec", "category": "bottle", "status": "ok", "protocol": "single",
              "profile": "quick", "weights_tag": "imagenet:lite0", "geometry": "resize256-crop224",
              "config": {"backbone": "tf_efficientnet_lite0"}, "metrics": {"image_auroc": 0.99, "pixel_auroc": 0.97}}
    (table,) = ref.comparison_tables([record], frame, ["pixel_auroc"])
    df = table.frame.reset_index()
    row = df[(df["category"] == "bottle") & (df["paper"] == "0.985")].iloc[0]
    assert row["ours"] == "0.970" and row["diff"] == "-0.015"
    assert "backbone tf_efficientnet_lite0" in row["our setting"] and "geometry resize256-crop224" in row["our setting"]
    note = next(n for n in table.footnotes if n.startswith(f"[{row['paper setting']}]"))
    assert "wide_resnet50_2" in note and "coreset 10%" in note


def test_table_reference_on_committed_bottle_records():
    """The acceptance check: ours vs PatchCore's and CutPaste's published bottle numbers."""
    from click.testing import CliRunner

    from adbench.cli import main

    results = ref.default_dir().parent
    have = {p.parent.name for p in (results / "mvtec").glob("*/bottle__*.json")}
    if not {"patchcore", "cutpaste"} <= have:
        pytest.skip("committed bottle records of patchcore and cutpaste not present")
    out = CliRunner().invoke(main, ["table", "--results", str(results), "--dataset", "mvtec", "--reference"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    pc = [l for l in lines if l.startswith("| patchcore ") and "| bottle " in l]
    cp = [l for l in lines if l.startswith("| cutpaste ") and "| bottle " in l]
    assert pc and cp
    assert any("| 1.000 " in l for l in pc)  # PatchCore official bottle image AUROC 100.0
    assert any("| 0.983 " in l for l in cp)  # CutPaste 3-way bottle 98.3
    assert all("profile quick" in l and "geometry resize" in l for l in pc + cp)
    assert any("wide_resnet50_2" in l for l in lines) and any("ResNet-18 from scratch" in l for l in lines)
