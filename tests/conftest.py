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


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, the previous setting restored afterwards: on the shared
    CPU two OpenMP threads spin-wait on each other and a training step of a small network costs
    5-10x the CPU time of a single-threaded one (``pytest.mark.usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fit_and_score():
    """Train a detector on the striped category of ``striped_category.make_category`` and score
    its test images; prints the image AUROC and the first and last epoch's loss. Why shared: the
    FastFlow and Reverse Distillation tests check their trained methods the same way. Returns
    (prediction, image AUROC)."""

    def run(det, batches, test, labels, name: str, loss_format: str):
        from sklearn.metrics import roc_auc_score
        from striped_category import as_batch

        det.fit(batches)
        pred = det.predict(as_batch(test))
        scores, _ = pred.numpy()
        auroc = roc_auc_score(labels, scores)
        first, last = det.loss_history[0], det.loss_history[-1]
        print(f"{name} generated-category image AUROC {auroc:.3f}, loss {first:{loss_format}} -> {last:{loss_format}}")
        return pred, auroc

    return run
