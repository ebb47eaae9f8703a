"""The k-shot protocol (issue 26, part 3): ``--shots K`` trains each job on K normal images drawn
by its seed, nested across K; records carry ``shots``, ``shot_images`` and ``n_train_images == K``;
the shot count is part of the job's identity, record name and table column; a method that cannot
fit on K images stops that job with one line and the run goes on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import adbench_testkit
from adbench.cli import main
from adbench.data import Sample
from adbench.data.shots import draw_shots, shot_order
from adbench.errors import ConfigError
from adbench.jobs import Job
from adbench.options import parse_shots


def _samples(n: int) -> list[Sample]:
    return [Sample(path=Path(f"/data/cat/train/good/{i:03d}.png"), label=0, category="cat", split="train")
            for i in range(n)]


def test_parse_shots():
    assert parse_shots(None) is None and parse_shots("") is None
    assert parse_shots("8,1,2,2,4") == [1, 2, 4, 8]
    for bad in ("0", "-1", "two", ",", "1.5"):
        with pytest.raises(ConfigError, match="--shots"):
            parse_shots(bad)


def test_draws_are_nested_seeded_and_independent_of_listing_order():
    samples = _samples(30)
    for seed in range(5):
        previous: list = []
        for k in (1, 2, 4, 8, 16, 30):
            drawn = draw_shots(samples, k, seed, "cat")
            assert len(drawn) == k == len(set(drawn))
            assert drawn[:len(previous)] == previous  # nested: the smaller set is a prefix
            previous = drawn
        assert draw_shots(list(reversed(samples)), 4, seed, "cat") == draw_shots(samples, 4, seed, "cat")
    firsts = {draw_shots(samples, 1, seed, "cat")[0].path.name for seed in range(10)}
    assert len(firsts) > 3  # seeds draw different images
    assert shot_order(samples, 0, "cat") != shot_order(samples, 0, "other")  # categories independent
    assert draw_shots(samples, None, 0, "cat") == samples
    with pytest.raises(ValueError, match="--shots 31: cat has 30"):
        draw_shots(samples, 31, 0, "cat")


def test_shots_are_part_of_the_job_identity():
    base = dict(method="m", dataset="d", categories=["c"], seed=0, config={}, config_hash="h")
    full, one, two = Job(**base), Job(**base, shots=1), Job(**base, shots=2)
    assert len({full.key(), one.key(), two.key()}) == 3
    assert full.record_name("c") == "c__single__s0__h.json"
    assert one.record_name("c") == "c__single__s0__k1__h.json"
    assert "shots" not in full.identity() and one.identity()["shots"] == 1


@pytest.fixture(scope="module")
def kit_root(tmp_path_factory):
    return adbench_testkit.make_kit_data(tmp_path_factory.mktemp("shots-kit"), categories=("obj_a",), n_train=6,
                                         size=32)


def _run(args: list[str]):
    return CliRunner().invoke(main, ["run", "--plugin", "adbench_testkit", "-q", *args])


def test_records_carry_the_drawn_images_nested_over_k(kit_root, tmp_path):
    res = tmp_path / "res"
    out = _run(["--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_root), "--shots", "1,2,4",
                "--seed", "0,1", "--results", str(res)])
    assert out.exit_code == 0, out.output
    records = [json.loads(p.read_text()) for p in sorted(res.rglob("*.json"))]
    assert len(records) == 6
    by = {(r["seed"], r["shots"]): r for r in records}
    for (seed, k), r in by.items():
        assert r["n_train_images"] == k == len(r["shot_images"])
        assert f"__s{seed}__k{k}__" in r["record_name"]
        assert r["train_batches_with_replacement"] is False  # kit_mean estimates a mean: each image once
    for seed in (0, 1):
        assert set(by[seed, 1]["shot_images"]) <= set(by[seed, 2]["shot_images"]) <= set(by[seed, 4]["shot_images"])
    table = CliRunner().invoke(main, ["table", "--results", str(res), "--metric", "image_auroc"])
    assert table.exit_code == 0, table.output
    for k in (1, 2, 4):
        assert f"kit_mean ({k}-shot)" in table.output
    # the report ranks each K apart: a 1-shot result never shares a leaderboard with a 4-shot one
    from adbench.reporting.site import build_report

    site = build_report(res, tmp_path / "report")
    page = (site / "kitgen.html").read_text()
    for k in (1, 2, 4):
        assert f'id="lb-kitgen-paper-{k}shot"' in page and f"Paper budget, {k}-shot" in page


def test_more_shots_than_training_images_is_one_line_before_any_job(kit_root, tmp_path):
    out = _run(["--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_root), "--shots", "1,7",
                "--results", str(tmp_path / "res")])
    assert out.exit_code == 2
    assert "--shots 7: obj_a has only 6 training image(s)" in out.output
    assert "Traceback" not in out.output and not (tmp_path / "res").exists()


#: the methods that cannot fit on one image, and why (each stops its job before fitting)
ONE_SHOT_STOPS = {
    "cutpaste": "the Gaussian density estimator (GDE) needs at least 2 training images",
    "cutpaste_patch": "the per-patch Gaussian density estimator (GDE) needs at least 2 training images",
    "feature_gaussian": "the per-location Gaussian's covariance needs at least 2 training images",
    "tocoad": "stages I/II contrast training images with each other and need at least 2",
}


def test_every_method_runs_one_shot_or_stops_with_its_reason(tmp_path):
    """Every built-in method with ``--shots 1`` on a synthetic category with tiny budgets: every method either
    fits its one image (network trainers on full batches drawn with replacement) or stops before
    fitting with one line; the run goes on (exit 1: some jobs failed)."""
    from adbench.registry import METHODS

    METHODS.load()
    builtin = sorted(n for n in METHODS.names() if METHODS.get(n).__module__.startswith("adbench.methods."))
    config = tmp_path / "tiny.yaml"
    tiny = {**adbench_testkit.TINY_CONFIGS, "anomalydino": {"image_size": 56}}  # a 4x4 patch grid
    config.write_text(yaml.safe_dump({"methods": tiny}))
    res = tmp_path / "res"
    out = CliRunner().invoke(main, ["run", "-q", "--method", ",".join(builtin), "--dataset", "synthetic", "--category", "chip",
                                    "--shots", "1", "--profile", "quick", "--weights", "random",
                                    "--config", str(config), "--results", str(res)])
    assert out.exit_code == 1, out.output
    assert "Traceback" not in out.output
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in res.rglob("*.json"))}
    assert set(records) == set(builtin) and len(builtin) >= 12
    stopped = {m: r["error"] for m, r in records.items() if r["status"] != "ok"}
    assert set(stopped) == set(ONE_SHOT_STOPS)
    for method, reason in ONE_SHOT_STOPS.items():
        assert stopped[method] == f"FewShotError: {method}: 1-shot: {reason}"
        assert f"FAILED {method}/synthetic/chip/s0/1-shot: failed: FewShotError" in out.output
    for method, r in records.items():
        if method in stopped:
            continue
        assert r["shots"] == 1 and r["n_train_images"] == 1 and len(r["shot_images"]) == 1
        assert r["train_batches_with_replacement"] == METHODS.get(method).trains_networks, method
        assert r["record_name"].startswith("chip__single__s0__k1__")
