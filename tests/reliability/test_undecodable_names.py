"""Issue 14, item 9: file names that are not valid UTF-8 no longer crash ``plot gallery``.

On Linux a file name is bytes; Python keeps a byte that is not UTF-8 (0xff) as a lone surrogate
(``\\udcff``), which survives indexing, the job, the record and the saved predictions, and then
crashed matplotlib's text layout. Figures now show such a byte escaped (``\\xff``), and
``--sample`` accepts the name either as the shell passes it or as the figure shows it.
"""
from __future__ import annotations

import os

import numpy as np
from click.testing import CliRunner

from adbench.reporting import plots
from adbench.results import predictions
from adbench.cli import main
from adbench.results.store import Store
from reliability_kit import UNDECODABLE


def test_gallery_of_a_run_on_undecodable_names(junk_dataset_run, tmp_path):
    result, _, results = junk_dataset_run
    assert result.exit_code == 0, (result.output, result.exception)
    (record,) = [r for r in Store(results).records() if r.get("status") == "ok"]
    arrays = predictions.load(record)
    name = os.fsdecode(UNDECODABLE)  # '\udcff00.png'
    assert any(str(p).endswith("/square/" + name) for p in arrays["paths"])  # stored as is, end to end
    # the sample as the shell passes it, and as the figure shows it: two rows of that image
    out = tmp_path / "gallery"
    r = CliRunner().invoke(main, ["plot", "gallery", "--results", str(results), "--out", str(out),
                                  "--sample", name, "--sample", "\\xff00.png"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert r.stderr.splitlines() == [f"wrote {out}.png", f"wrote {out}.pdf"]
    for suffix in (".png", ".pdf"):
        assert out.with_suffix(suffix).stat().st_size > 1000


def test_shown_escapes_only_what_cannot_be_encoded(tmp_path):
    assert plots.shown("square/" + os.fsdecode(b"\xff00.png")) == "square/\\xff00.png"
    assert plots.shown("caf\u00e9/\u5f71.png") == "caf\u00e9/\u5f71.png"  # valid UTF-8 stays
    assert plots.shown("\ud800") == "\\ud800"  # a surrogate that is no escaped byte
    # a category named with a bad byte in a heatmap / bars
    records = [{"method": "m", "dataset": "d", "category": os.fsdecode(b"\xffcat"), "status": "ok",
                "profile": "quick", "metrics": {"image_auroc": 0.9}}]
    paths = plots.heatmap(records, "image_auroc", tmp_path / "heat")
    assert all(p.stat().st_size > 1000 for p in paths)
    assert plots.pick_samples({"paths": np.array([os.fsdecode(b"a/\xff.png")]), "scores": np.zeros(1),
                               "labels": np.zeros(1)}, 1, ["\\xff.png"]) == [0]
