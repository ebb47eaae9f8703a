"""Shared test fixtures.

Tests that need the real material in ../shared (data or weights) use ``shared_data`` or
``shared_weights``. Without ../shared they skip with the reason, except under
``ADBENCH_REQUIRE_SHARED=1`` (set by .ci/run), where a missing ../shared is a failure: CI has it
and must use it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADBENCH_SHARED", REPO.parent / "shared")).resolve()


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    reason = f"{what} not found at {path} (set ADBENCH_SHARED or place ../shared beside the repo)"
    if os.environ.get("ADBENCH_REQUIRE_SHARED") == "1":
        pytest.fail(f"ADBENCH_REQUIRE_SHARED=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (contains mvtec_ad/bottle and magnetic_tile)."""
    return _need(SHARED / "data" / "mvtec_ad" / "bottle", "real data") and SHARED / "data"


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """../shared/weights with tf_efficientnet_lite0.pth; also exported as ADBENCH_WEIGHTS_DIR."""
    folder = SHARED / "weights"
    _need(folder / "tf_efficientnet_lite0.pth", "ImageNet weights")
    os.environ.setdefault("ADBENCH_WEIGHTS_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Tests share 2 cores; keep torch from oversubscribing them."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
