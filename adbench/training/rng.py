"""Every random state a training run depends on, as plain data, and back.

A resumed run reproduces an uninterrupted one only if it continues from the very same random
states: Python's ``random``, NumPy's legacy global state, torch's CPU generator, every CUDA
device's generator, and any generator a method or sampler owns (a ``numpy.random.Generator``
drawing synthetic anomalies, a ``torch.Generator`` shuffling batches). ``capture`` turns them
into lists, ints and tensors only, so a checkpoint loads with ``torch.load(weights_only=True)``;
``restore`` puts them back into the same objects.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch


def _numpy_legacy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_legacy_restore(state: Mapping[str, Any]) -> None:
    keys = np.asarray(state["keys"].numpy(), dtype=np.uint32)
    np.random.set_state((state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"])))


def _generator_state(gen: Any) -> Any:
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state()}
    if isinstance(gen, np.random.Generator):
        return {"kind": "numpy", "state": _plain(gen.bit_generator.state)}
    raise TypeError(f"cannot capture a random generator of type {type(gen).__name__}")


def _set_generator_state(gen: Any, saved: Mapping[str, Any]) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(saved["state"])
    else:
        gen.bit_generator.state = _unplain(saved["state"])


def _plain(value: Any) -> Any:
    """NumPy bit-generator states hold Python ints too large for a tensor: keep them as decimal
    strings inside plain dicts (``weights_only`` loading accepts str, int, float, dict, list)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return {"__bigint__": str(value)}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bigint__"}:
            return int(value["__bigint__"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return value


def capture(generators: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """All global random states plus ``generators`` (name -> torch/numpy generator)."""
    state: dict[str, Any] = {
        "python": _plain({"state": list(random.getstate()[1]), "version": random.getstate()[0],
                          "gauss": random.getstate()[2]}),
        "numpy": _numpy_legacy_state(),
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "generators": {name: _generator_state(g) for name, g in (generators or {}).items()},
    }
    return state


def restore(state: Mapping[str, Any], generators: Mapping[str, Any] | None = None, *, partial: bool = False) -> None:
    """Put every state ``capture`` saved back. A generator missing on one side is an error,
    unless ``partial`` (then only the generators both sides name are restored)."""
    py = _unplain(state["python"])
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    _numpy_legacy_restore(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    saved = state.get("generators", {})
    mine = dict(generators or {})
    if set(saved) != set(mine) and not partial:
        raise ValueError(f"checkpoint has generators {sorted(saved)}, the method has {sorted(mine)}")
    for name, gen in mine.items():
        if name in saved:
            _set_generator_state(gen, saved[name])
