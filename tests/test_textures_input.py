"""Issue 24: anomaly textures are a named input, like weights; ToCoAD's stages=none is PatchCore.

* DRAEM's paper/miad and ToCoAD's paper/convnext runs without ``--textures`` stop before any
  job with one exit-2 line naming the methods and the profile; a bad folder (missing, empty,
  an image that does not decode, given by flag or by ``$ADBENCH_TEXTURES_DIR``) is one line too,
  and so are a folder written into ``anomaly_source`` and a ``--textures`` nothing reads;
* with a DTD-layout folder of one-colour images, the anomalies the methods' own generators make
  (DRAEM's sampler, ToCoAD's G, built from the config the planner binds) paste exactly those
  colours, blended as the papers' beta says;
* ``quick`` needs nothing (one note), ``anomaly_source=procedural`` runs with one note;
* the fingerprint ignores the folder's location and changes when a file changes; the record
  states fingerprint and count, a moved copy is "already done", another set is not;
* ``stages=none`` gives PatchCore's scores and maps exactly, by default.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import adbench_testkit
from adbench.cli import main
from adbench.components.textures import fingerprint, read_texture_set
from adbench.config import resolve_config
from adbench.data import load_rgb
from adbench.detector import RunContext
from adbench.registry import METHODS
from adbench.run.runner import RunOptions, plan_run

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}
NEEDS = ("give a DTD copy (images/<class>/*.jpg) with --textures DIR or $ADBENCH_TEXTURES_DIR, or --set "
         "anomaly_source=procedural for procedural textures (not the paper's recipe)")
#: DRAEM's paper profile shrunk to one cheap epoch on 32-px images
TINY_DRAEM = ["image_size=32", "recon_width=4", "disc_width=4", "epochs=1", "batch_size=2", "score_filter=5"]


@pytest.fixture(autouse=True)
def _no_textures_in_env(monkeypatch):
    monkeypatch.delenv("ADBENCH_TEXTURES_DIR", raising=False)


@pytest.fixture()
def kit(tmp_path) -> Path:
    return adbench_testkit.make_kit_data(tmp_path / "data", categories=("obj_b",))


def dtd_folder(root: Path, colours=COLOURS, per_class: int = 2) -> Path:
    """A DTD copy in miniature: ``images/<class>/<class>_000i.jpg`` of one colour per class,
    plus DTD's other folders (never read)."""
    for name, rgb in colours.items():
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((40, 56, 3), rgb, np.uint8)).save(folder / f"{name}_{i:04d}.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "train1.txt").write_text("blue/blue_0000.jpg\n")
    return root


def decoded_colours(folder: Path) -> list[torch.Tensor]:
    """Each class's colour as a JPEG decodes it (red 255 is stored as 254), float in [0, 1]."""
    out = []
    for name in sorted(COLOURS):
        pixels = np.asarray(load_rgb(folder / "images" / name / f"{name}_0000.jpg")).reshape(-1, 3)
        assert (pixels == pixels[0]).all(), "a one-colour JPEG decodes to one colour"
        out.append(torch.from_numpy(pixels[0].astype(np.float32) / 255.0))
    return out


def cli(tmp_path: Path, *args: str, results: str = "res"):
    argv = ["run", "--plugin", "adbench_testkit", "--dataset", "kitgen", "--results", str(tmp_path / results), "-q",
            "--weights", "random", *args]
    return CliRunner().invoke(main, argv)


def assert_one_error(result, line: str, tmp_path: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: {line}"]
    assert not any((tmp_path / "res").rglob("*.json")), "nothing may run"


def options(kit: Path, tmp_path: Path, method: str, profile: str = "paper", sets=(), **kw) -> RunOptions:
    return RunOptions(method=method, dataset="kitgen", data_root=str(kit), profile=profile, weights="random",
                      plugins=["adbench_testkit"], results=str(tmp_path / "res"), progress=False,
                      set_options=list(sets), **kw)


# --- a run without textures, or with a bad folder, stops before any job ---------------------
@pytest.mark.parametrize("method, profile", [("draem", "paper"), ("draem", "miad"), ("tocoad", "paper"),
                                             ("tocoad", "convnext")])
def test_paper_run_without_textures_stops_before_any_job(tmp_path, kit, method, profile):
    result = cli(tmp_path, "--method", method, "--profile", profile, "--data-root", str(kit))
    assert_one_error(result, f"{method} (profile {profile}) pastes DTD texture images into its synthetic "
                             f"anomalies: {NEEDS}", tmp_path)


def test_both_methods_without_textures_are_one_line(tmp_path, kit):
    result = cli(tmp_path, "--method", "draem,tocoad", "--data-root", str(kit))
    assert_one_error(result, f"draem, tocoad (profile paper) paste DTD texture images into their synthetic "
                             f"anomalies: {NEEDS}", tmp_path)


def test_a_bad_texture_folder_is_one_line(tmp_path, kit, monkeypatch):
    base = ["--method", "draem", "--data-root", str(kit)]
    who = "(draem (profile paper) pastes images from it)"
    missing = str((tmp_path / "nowhere").resolve())
    assert_one_error(cli(tmp_path, *base, "--textures", missing), f"--textures {missing}: folder not found {who}",
                     tmp_path)
    empty = tmp_path / "empty"
    (empty / "images" / "red").mkdir(parents=True)
    (empty / "red.jpg").write_bytes(b"")  # not in the layout: ignored
    assert_one_error(cli(tmp_path, *base, "--textures", str(empty.resolve())),
                     f"--textures {empty.resolve()}: no images/<class>/*.jpg images in it (DTD's layout: one folder "
                     f"per texture class under images/) {who}", tmp_path)
    broken = dtd_folder(tmp_path / "broken")
    good = broken / "images" / "red" / "red_0000.jpg"
    (broken / "images" / "red" / "red_0002.jpg").write_bytes(good.read_bytes()[:200])  # truncated
    result = cli(tmp_path, *base, "--textures", str(broken.resolve()))
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert result.stderr.startswith(f"error: --textures {broken.resolve()}: images/red/red_0002.jpg cannot be decoded (")
    assert result.stderr.strip().endswith(who)
    monkeypatch.setenv("ADBENCH_TEXTURES_DIR", missing)
    assert_one_error(cli(tmp_path, *base), f"$ADBENCH_TEXTURES_DIR={missing}: folder not found {who}", tmp_path)


def test_textures_come_in_one_way(tmp_path, kit):
    """A folder written into ``anomaly_source`` is refused (``--textures`` is the one way in), and
    ``--textures`` that no configuration reads is an error, not a silent option."""
    folder = str(dtd_folder(tmp_path / "dtd"))
    assert_one_error(cli(tmp_path, "--method", "draem", "--data-root", str(kit), "--set", f"anomaly_source={folder}"),
                     f"draem: anomaly_source={folder}: give a texture folder with --textures {folder} (or "
                     f"$ADBENCH_TEXTURES_DIR), which checks it before any job; anomaly_source takes only 'procedural'",
                     tmp_path)
    assert_one_error(cli(tmp_path, "--method", "tocoad", "--data-root", str(kit), "--set", "generator=cutpaste",
                         "--textures", folder),
                     f"--textures {folder} has no effect: no selected method pastes texture images in this "
                     f"configuration (tocoad)", tmp_path)


# --- the generators the methods use paste the set's colours, blended by beta ------------------
def fit_blend(out: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, colours, beta_max: float = 0.8) -> int:
    """``out == (1 - M) I + (1 - beta) M A + beta M I`` with one beta in [0, beta_max) and A one
    of ``colours``: the index of that colour."""
    assert torch.equal(out[:, ~mask], image[:, ~mask]), "outside the mask the image is untouched"
    o, i = out[:, mask].double(), image[:, mask].double()
    fits = []
    for k, colour in enumerate(colours):
        a = colour.double()[:, None]
        beta = float(((o - a) * (i - a)).sum() / ((i - a) ** 2).sum())
        fits.append((float(((1 - beta) * a + beta * i - o).abs().max()), k, beta))
    residual, k, beta = min(fits)
    assert residual < 1e-5 and 0.0 <= beta < beta_max, (residual, beta)
    return k


def planned_detector(kit: Path, tmp_path: Path, method: str, profile: str, sets, textures: Path):
    """The detector a job of ``adbench run --textures`` builds: the planner binds the set into
    the job's config, the job resolves that config (as ``run.worker.fit_detector`` does)."""
    plan = plan_run(options(kit, tmp_path, method, profile, sets, textures=str(textures)))
    job = plan.jobs[0]
    cls = METHODS.get(method)
    config = resolve_config(cls.Config, {"paper": {}}, "paper", job.config, method=method)
    torch.manual_seed(0)
    return cls(config, RunContext(seed=0, weights="random", profile=profile)), job


def test_draem_pastes_the_texture_colours_blended_by_beta(tmp_path, kit):
    folder = dtd_folder(tmp_path / "dtd")
    det, job = planned_detector(kit, tmp_path, "draem", "paper",
                                ["recon_width=4", "disc_width=4", "texture_ops=0", "rotate_prob=0"], folder)
    assert job.textures == str(folder.resolve())
    colours = decoded_colours(folder)
    images = (torch.rand(32, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    normal, augmented, masks = det.sampler.batch(images, np.random.default_rng(0))
    used = [fit_blend(a, n, m, colours) for n, a, m in zip(normal, augmented, masks) if m.any()]
    assert len(used) >= 8 and set(used) == {0, 1}, used  # both classes pasted
    facts = det.record_extras()["texture_set"]
    assert facts == {"source": "dtd", "sha256": read_texture_set(folder).sha256, "images": 4}


def test_tocoad_pastes_the_texture_colours_blended_by_beta(tmp_path, kit):
    """G of ToCoAD (Fig. 3): with its rotations off, ``I_G = (1 - M) I + M ((1 - beta) A +
    beta I)``, beta ~ U[0, 0.8), every image (eq. 1); the quick profile uses --textures too."""
    folder = dtd_folder(tmp_path / "dtd")
    det, _ = planned_detector(kit, tmp_path, "tocoad", "quick", ["rotate_degrees=0", "rotate90=false"], folder)
    colours = decoded_colours(folder)
    images = (torch.rand(16, 3, 24, 24, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    syn, masks = det.trainer.anomalies(images, "tocoad/dnp", epoch=0)
    normal = images.float() / 255.0
    used = [fit_blend(s, n, m, colours) for s, n, m in zip(syn, normal, masks)]
    assert all(m.any() for m in masks) and set(used) == {0, 1}, used
    assert det.record_extras()["texture_set"] == {"source": "dtd", "sha256": read_texture_set(folder).sha256,
                                                  "images": 4}


# --- quick needs nothing; procedural on request -----------------------------------------------
def test_quick_runs_need_nothing(tmp_path, kit):
    plan = plan_run(options(kit, tmp_path, "draem,tocoad", "quick"))
    assert len(plan.jobs) == 2 and all(job.textures is None for job in plan.jobs)
    notes = [n for n in plan.notes if "textures" in n]
    assert notes == ["draem, tocoad (profile quick): no --textures, so procedural anomaly textures (the paper pastes "
                     "DTD images; --textures DIR gives them)"]
    assert all(job.config["anomaly_source"] is None for job in plan.jobs)


def test_procedural_on_request_runs_with_one_note(tmp_path, kit):
    sets = [x for s in [*TINY_DRAEM, "anomaly_source=procedural"] for x in ("--set", s)]
    result = cli(tmp_path, "--method", "draem", "--data-root", str(kit), "--checkpoint-every", "0", *sets)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:") and "textures" in line]
    assert notes == ["note: draem: anomaly_source=procedural: procedural anomaly textures, not the DTD images the "
                     "paper pastes (numbers not comparable with the paper's)"]
    (path,) = (tmp_path / "res").rglob("*.json")
    extras = json.loads(path.read_text())["record_extras"]
    assert extras["texture_set"] == {"source": "procedural"} and extras["anomaly_source"] == "procedural"


# --- the texture set's identity ---------------------------------------------------------------
def test_fingerprint_ignores_the_location_and_sees_a_changed_file(tmp_path):
    first = read_texture_set(dtd_folder(tmp_path / "a" / "dtd"))
    moved = read_texture_set(shutil.copytree(tmp_path / "a" / "dtd", tmp_path / "elsewhere" / "copy"))
    assert (moved.sha256, moved.count) == (first.sha256, first.count) == (first.sha256, 4)
    assert moved.folder != first.folder
    changed = moved.folder / "images" / "blue" / "blue_0001.jpg"
    changed.write_bytes(changed.read_bytes() + b"\0")
    assert read_texture_set(moved.folder).sha256 != first.sha256
    assert fingerprint(moved.folder, list(moved.files)) != first.sha256


def test_record_states_fingerprint_and_count_and_jobs_are_keyed_by_content(tmp_path, kit):
    folder = dtd_folder(tmp_path / "dtd")
    sets = [x for s in TINY_DRAEM for x in ("--set", s)]
    result = cli(tmp_path, "--method", "draem", "--data-root", str(kit), "--checkpoint-every", "0",
                 "--textures", str(folder), *sets)
    assert result.exit_code == 0, result.output
    assert not [line for line in result.stderr.splitlines() if line.startswith("note:") and "textures" in line]
    (path,) = (tmp_path / "res").rglob("*.json")
    record = json.loads(path.read_text())
    truth = read_texture_set(folder)
    assert record["record_extras"]["texture_set"] == {"source": "dtd", "sha256": truth.sha256, "images": 4}
    assert record["config"]["anomaly_source"].endswith(f"#sha256={truth.sha256};images=4")

    def plan(textures: Path):
        return plan_run(options(kit, tmp_path, "draem", sets=TINY_DRAEM, textures=str(textures),
                                checkpoint_every=0))

    moved = Path(shutil.copytree(folder, tmp_path / "moved" / "dtd_copy"))
    shutil.rmtree(folder)
    again = plan(moved)
    assert again.todo == [] and len(again.skipped_done) == 1  # the same set elsewhere: already done
    assert again.jobs[0].config_hash == record["config_hash"]
    extra = moved / "images" / "red" / "red_0002.jpg"
    shutil.copy(moved / "images" / "red" / "red_0000.jpg", extra)
    other = plan(moved)
    assert len(other.todo) == 1 and other.jobs[0].config_hash != record["config_hash"]  # another set: a new job
    assert other.jobs[0].config["anomaly_source"].endswith(";images=5")


# --- ToCoAD stages=none is PatchCore, by default ----------------------------------------------
def test_tocoad_stages_none_equals_patchcore_by_default(tmp_path):
    shared = {"backbone": "resnet18", "image_size": "64", "crop_size": "none", "batch_size": "8",
              "pretrain_embed_dim": "64", "target_embed_dim": "64", "coreset_ratio": "0.25"}
    pc_cls, tc_cls = METHODS.get("patchcore"), METHODS.get("tocoad")
    pc_cfg = resolve_config(pc_cls.Config, pc_cls.PROFILES, "paper", shared, method="patchcore")
    tc_cfg = resolve_config(tc_cls.Config, tc_cls.PROFILES, "paper", {**shared, "stages": "none"}, method="tocoad")
    assert tc_cfg.reweight_per_patch is False  # follows stages
    for stages in ("both", "ncl"):  # unchanged: eq. 8-9 after training
        assert resolve_config(tc_cls.Config, tc_cls.PROFILES, "paper", {"stages": stages}).reweight_per_patch is True
    assert tc_cls.texture_source(tc_cfg) is None  # no generator, no textures
    rng = torch.Generator().manual_seed(0)
    train = adbench_testkit.as_batches(torch.rand(8, 3, 64, 64, generator=rng))
    test = adbench_testkit.as_batches(torch.rand(6, 3, 64, 64, generator=rng), batch_size=3)
    ctx = RunContext(seed=0, weights="random", workdir=str(tmp_path))
    torch.manual_seed(0)
    pc = pc_cls(pc_cfg, ctx)
    pc.fit(train)
    torch.manual_seed(0)
    tc = tc_cls(tc_cfg, ctx)
    tc.fit(train)
    assert torch.equal(pc.bank, tc.bank)
    for batch in test:
        a, b = pc.predict(batch), tc.predict(batch)
        assert torch.equal(torch.as_tensor(a.scores), torch.as_tensor(b.scores))
        assert torch.equal(torch.as_tensor(a.maps), torch.as_tensor(b.maps))
    assert tc.record_extras()["scoring"].startswith("patchcore")
