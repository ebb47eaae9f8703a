"""A store of generated records, for exercising readers (the report, tables) at any scale.

Nothing here is a result: every record says ``"generated": true``, its host is
``generated``, and its metrics are computed (by ``predictions.recompute``, the evaluator of
``adbench evaluate``) from test outputs drawn at random: per setting a ``skill`` shifts anomalous
images' scores and defect pixels' map values above the normal ones. What the readers get is
therefore internally consistent (metrics, saved predictions, per-defect numbers, timings), which
is what a test or a benchmark of a reader needs, and nothing more.

Test images are small generated PNGs under ``<root>/.generated_images`` (a dot-folder: the
store never reads it as records), so galleries have real files to show.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from adbench.results import predictions
from adbench.results.store import Store

DEFECTS = ("scratch", "stain")


@dataclass(frozen=True)
class GeneratedSetting:
    method: str
    skill: float  # 0: chance; 3: nearly separable
    profile: str = "paper"
    weights_source: str = "weights dir generated.pth"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        text = f"{self.method}|{self.profile}|{sorted(self.config.items())}"
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class Plan:
    datasets: dict[str, list[str]]  # dataset -> categories
    settings: list[GeneratedSetting]
    seeds: tuple[int, ...] = (0,)
    with_predictions: tuple[str, ...] = ()  # datasets whose records keep saved predictions
    n_normal: int = 12
    n_anomalous: int = 12
    map_size: int = 32
    seed: int = 0


def generate(root: str | Path, plan: Plan) -> int:
    """Write the plan's records (and predictions) under ``root``; returns how many records."""
    root = Path(root)
    store = Store(root)
    n = 0
    for dataset, categories in plan.datasets.items():
        for category in categories:
            paths, labels, masks, defects = _test_set(root, dataset, category, plan)
            for setting in plan.settings:
                for seed in plan.seeds:
                    rng = np.random.default_rng(_seed_of(plan.seed, dataset, category, setting.method,
                                                         setting.config_hash, seed))
                    arrays = _outputs(rng, setting.skill, paths, labels, masks, defects)
                    record = _record(dataset, category, setting, seed, arrays, rng)
                    path = store.write(record)
                    if dataset in plan.with_predictions:
                        predictions.save(path, _packed(arrays))
                        record["predictions"] = predictions.path_for(path).name
                        store.write(record)
                    n += 1
    return n


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def _test_set(root: Path, dataset: str, category: str, plan: Plan):
    """Test images written once per category: normal ones plain, anomalous ones with a bright
    rectangle (its mask the ground truth)."""
    from PIL import Image

    rng = np.random.default_rng(_seed_of(plan.seed, dataset, category, "images"))
    folder = root / ".generated_images" / dataset / category
    size = plan.map_size
    paths, labels, masks, defects = [], [], [], []
    for i in range(plan.n_normal + plan.n_anomalous):
        anomalous = i >= plan.n_normal
        image = (rng.normal(0.45, 0.05, (size, size, 3)) + np.linspace(0, 0.2, size)[None, :, None]).clip(0, 1)
        mask = np.zeros((size, size), bool)
        defect = "good"
        if anomalous:
            y, x = rng.integers(2, size - 10, 2)
            h, w = rng.integers(3, 9, 2)
            mask[y:y + h, x:x + w] = True
            image[mask] = [0.9, 0.85, 0.3]
            defect = DEFECTS[i % len(DEFECTS)]
        path = folder / defect / f"{i:03d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255).astype(np.uint8)).save(path)
        paths.append(str(path.resolve()))
        labels.append(anomalous)
        masks.append(mask)
        defects.append(defect)
    return paths, np.array(labels), np.stack(masks), defects


def _outputs(rng, skill: float, paths, labels, masks, defects) -> dict[str, np.ndarray]:
    maps = rng.normal(0.0, 1.0, masks.shape).astype(np.float32)
    maps[masks] += skill * rng.uniform(0.5, 1.5)
    scores = maps.reshape(len(maps), -1).max(1).astype(np.float64) + rng.normal(0, 0.3, len(maps))
    scores[labels] += 0.5 * skill
    return {"scores": scores, "labels": labels.astype(np.int8), "maps": maps.astype(np.float16),
            "map_max": maps.reshape(len(maps), -1).max(1).astype(np.float64), "masks": masks,
            "paths": np.array(paths), "defect_types": np.array(defects)}


def _packed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(arrays)
    masks = out.pop("masks")
    out["masks_packed"] = np.packbits(masks.reshape(-1))
    out["masks_shape"] = np.array(masks.shape)
    return out


def _record(dataset: str, category: str, setting: GeneratedSetting, seed: int, arrays, rng) -> dict[str, Any]:
    recomputed = predictions.recompute(arrays)
    name = f"{category}__single__s{seed}__{setting.config_hash}.json"
    fit = float(rng.uniform(5, 50)) * (1 + setting.skill)
    return {
        "record_version": 1, "record_name": name, "generated": True,
        "method": setting.method, "dataset": dataset, "category": category, "category_kind": "object",
        "protocol": "single", "training_categories": [category], "seed": seed, "profile": setting.profile,
        "config": dict(setting.config), "config_hash": setting.config_hash, "weights": None, "device": "cpu",
        "status": "ok", "error": None, "metrics": _rates(recomputed["values"]), "undefined": recomputed.get("undefined", {}),
        "per_defect": recomputed.get("per_defect", {}), "counts": recomputed.get("counts", {}),
        "geometry": f"resize{arrays['maps'].shape[-1]}", "weights_tag": "generated",
        "weights_source": setting.weights_source, "weights_sha256": None, "precision": "fp32",
        "n_parameters": int(1e6 * (1 + setting.skill)), "predict_flops_per_image": int(1e9 * (1 + setting.skill)),
        "fit_seconds": round(fit, 2), "test_seconds": 1.0, "predict_seconds": 0.8,
        "test_throughput": round(float(rng.uniform(5, 200)) / (1 + setting.skill), 3),
        "test_throughput_end_to_end": None, "peak_rss_mb": round(float(rng.uniform(500, 3000)), 1),
        "rss_at_start_mb": 400.0, "peak_cuda_mb": None, "torch_threads": 2,
        "versions": {"adbench": "generated", "torch": "generated"}, "git_commit": None,
        "host": {"hostname": "generated", "cpu_model": "generated", "cpu_count": 2, "gpu_name": None},
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
    }


def default_plan(n_datasets: int = 3, n_categories: int = 19, n_settings: int = 12, seeds: tuple[int, ...] = (0, 1, 2),
                 with_predictions: Optional[tuple[str, ...]] = None, **kwargs) -> Plan:
    """``n_datasets`` x ``n_categories`` x ``n_settings`` x seeds records; skills spread from
    0.5 to 3, a third of the settings at a ``quick`` profile."""
    datasets = {f"gen{d}": [f"cat{c:02d}" for c in range(n_categories)] for d in range(n_datasets)}
    settings = [GeneratedSetting(method=f"method{i:02d}", skill=0.5 + 2.5 * i / max(1, n_settings - 1),
                                 profile="quick" if i % 3 == 2 else "paper") for i in range(n_settings)]
    first = next(iter(datasets))
    return Plan(datasets=datasets, settings=settings, seeds=seeds,
                with_predictions=(first,) if with_predictions is None else with_predictions, **kwargs)


def _rates(values: dict[str, Any]) -> dict[str, Optional[float]]:
    """Metric values as a record stores them: finite floats, or None where undefined."""
    return {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in values.items()}
