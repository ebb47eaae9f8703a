"""The built-in synthetic set: layout, determinism, exact masks, cache location, atomic writes.

The set is generated once per test session into a pytest temp folder (``synthetic_root``),
never into the user's ~/.cache; test_baselines.py reuses the same folder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adbench.dataset import validate_index
from adbench.registry import DATASETS

synthetic = pytest.importorskip("adbench.datasets.synthetic")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """The generated set, shared by every test module of the session (same base folder)."""
    return synthetic.ensure_generated(tmp_path_factory.getbasetemp() / "adbench-synthetic-cache")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_categories_and_counts(synthetic_root):
    ds = DATASETS.get("synthetic")(synthetic_root)
    assert ds.root == synthetic_root
    cats = ds.categories()
    assert cats == ["chip", "fabric", "washer"]
    infos = [ds.category_info(c) for c in cats]
    assert sum(i.kind == "texture" for i in infos) == 1
    objects = [i for i in infos if i.kind == "object"]
    assert len(objects) == 2 and any(i.aligned for i in objects) and not all(i.aligned for i in objects)
    for cat in cats:
        index = ds.index(cat)
        validate_index(index)  # every file opens, every mask fits its image, no orphans
        assert len(index.train) == synthetic.N_TRAIN
        assert len(index.test) == synthetic.N_TEST_GOOD + 3 * synthetic.N_PER_DEFECT
        defects = {s.defect_type for s in index.test} - {"good"}
        assert len(defects) == 3
        with Image.open(index.train[0].path) as img:
            assert img.size == (synthetic.SIZE, synthetic.SIZE) and img.mode == "RGB"


def test_readable_by_the_mvtec_adapter(synthetic_root):
    """MVTec layout: the generic MVTec walker indexes the same files."""
    mvtec = DATASETS.get("mvtec")(synthetic_root)
    ours = DATASETS.get("synthetic")(synthetic_root)
    assert mvtec.categories() == ours.categories()
    a, b = mvtec.index("chip"), ours.index("chip")
    assert [s.path for s in a.test] == [s.path for s in b.test]
    assert [s.mask_path for s in a.test] == [s.mask_path for s in b.test]


def test_masks_are_plausible_defects(synthetic_root):
    """Each mask is non-empty, binary, small (a defect, not the whole image)."""
    ds = DATASETS.get("synthetic")(synthetic_root)
    for cat in ds.categories():
        for sample in ds.index(cat).test:
            if not sample.label:
                continue
            mask = np.asarray(Image.open(sample.mask_path))
            assert set(np.unique(mask)) <= {0, 255}
            area = int((mask > 0).sum())
            assert 8 <= area <= 0.05 * mask.size, (sample.mask_path, area)


def test_mask_is_exactly_the_changed_pixels():
    """Before the photometric nuisance, a defect changes the pixels of its mask and no other."""
    for name, spec in synthetic.CATEGORIES.items():
        for defect in spec.defects:
            rng_a = np.random.default_rng(7)
            clean, bad = spec.render(rng_a, defect)
            rng_b = np.random.default_rng(7)
            clean_again, _ = spec.render(rng_b, None)
            # the defect-free rendering with the same generator state is the clean image
            assert np.array_equal(clean, clean_again) or name in ("chip", "washer")
            changed = np.abs(bad - clean).max(-1) > 1.0 / 255
            assert changed.any(), (name, defect)
            assert changed.mean() < 0.05, (name, defect)


def test_generation_is_deterministic(tmp_path, synthetic_root):
    """Regenerating a category gives the same bytes as the session's set (fixed seeds)."""
    synthetic.generate_category("washer", tmp_path / "washer")
    assert _digest(tmp_path / "washer") == _digest(synthetic_root / "washer")


def test_cache_location_env_and_data_root(tmp_path, monkeypatch, synthetic_root):
    assert DATASETS.get("synthetic").needs_root is False
    monkeypatch.setenv(synthetic.CACHE_ENV, str(tmp_path / "cache"))
    assert synthetic.default_cache_root() == tmp_path / "cache"
    # --data-root pointing at the set itself is used as is (no generation)
    assert DATASETS.get("synthetic")(synthetic_root).root == synthetic_root
    # --data-root pointing at a base folder holding the set: <root>/synthetic-v<VERSION>
    assert DATASETS.get("synthetic")(synthetic_root.parent).root == synthetic_root


def test_killed_generation_leaves_no_half_set(tmp_path, monkeypatch):
    """A generation that dies half-way leaves neither the target nor its temp folder."""
    calls = []

    def fake(name, out):  # stands in for the real (slower) generator
        calls.append(name)
        (out / "train" / "good").mkdir(parents=True)
        (out / "train" / "good" / "000.png").write_bytes(b"x")
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(synthetic, "generate_category", fake)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_generated(tmp_path)
    assert list(tmp_path.iterdir()) == []
    # a leftover half folder without the completion marker is not trusted: regenerated
    half = tmp_path / f"synthetic-v{synthetic.VERSION}"
    (half / "chip" / "train").mkdir(parents=True)
    calls.append("reset")  # the next calls do not die
    out = synthetic.ensure_generated(tmp_path)
    assert out == half and (out / synthetic.MARKER).is_file()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(synthetic.CATEGORIES)
    assert [p.name for p in tmp_path.iterdir()] == [half.name]
    # once complete, it is reused as is
    calls.clear()
    assert synthetic.ensure_generated(tmp_path) == half and calls == []
