"""Where jobs go on a multi-GPU machine, checked without a GPU: the GPU list is faked at
``adbench.run.gpus.visible_gpus`` (what nvidia-smi would print), and the executor's child start is
captured instead of run. What runs on a real GPU is benchmarks/gpu_check.sh's part."""
from __future__ import annotations

import os

import pytest

from adbench.run import gpus as gpus_module
from adbench.errors import ConfigError
from adbench.run.executors import LocalExecutor
from adbench.run.gpus import GPU
from adbench.jobs import Job
from adbench.run.executors import local_resources
from adbench.run.runner import RunOptions, check_device

FOUR = (GPU(0, "GPU-aaa", "H200"), GPU(1, "GPU-bbb", "H200"), GPU(2, "GPU-ccc", "H200"), GPU(3, "GPU-ddd", "H200"))


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(gpus_module, "visible_gpus", lambda: FOUR)


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def test_one_job_per_gpu_by_default(four_gpus):
    n_jobs, gpus, threads = local_resources(RunOptions(device="auto"))
    assert (n_jobs, gpus) == (4, [0, 1, 2, 3])
    assert threads == max(1, _cores() // 4)
    assert local_resources(RunOptions(device="cuda", jobs=8))[:2] == (8, [0, 1, 2, 3])  # two per GPU
    assert local_resources(RunOptions(device="cpu")) == (1, [], None)  # a CPU run stays at one job
    assert local_resources(RunOptions(device="cpu", jobs=2)) == (2, [], max(1, _cores() // 2))


def test_cuda_n_counts_within_cuda_visible_devices(monkeypatch):
    """``--device cuda:1`` with CUDA_VISIBLE_DEVICES=2,3 is physical GPU 3, as in torch."""
    monkeypatch.setattr(gpus_module, "visible_gpus", lambda: FOUR[2:])
    assert local_resources(RunOptions(device="cuda:1"))[:2] == (1, [3])
    check_device("cuda:1")
    with pytest.raises(ConfigError, match=r"--device cuda:2: no such GPU here \(2 visible: cuda:0 to cuda:1\)"):
        check_device("cuda:2")
    monkeypatch.setattr(gpus_module, "visible_gpus", lambda: ())
    with pytest.raises(ConfigError, match="--device cuda: no CUDA GPU is visible on this machine"):
        check_device("cuda")


def test_each_slot_pins_its_own_gpu_and_threads():
    """Slot i's child sees only GPU gpus[i] and gets the slot's threads; a CPU job gets no GPU."""
    started = []

    class FakeProcess:
        def __init__(self, target, args, name):
            self.args = args

        def start(self):
            started.append(self.args)

    class FakeEnd:
        def close(self):
            pass

    executor = LocalExecutor(n_jobs=2, gpus=[5, 7], threads=3)
    executor.context = type("Ctx", (), {"Pipe": staticmethod(lambda duplex: (FakeEnd(), FakeEnd())),
                                        "Process": FakeProcess})()
    job = Job(method="m", dataset="d", data_root=None, categories=["c"], seed=0, protocol="single",
              profile="quick", config={}, config_hash="h", device="cuda")
    for slot in (0, 1):
        executor._launch(job, slot)
    executor._launch(Job(**{**job.to_dict(), "device": "cpu"}), 0)
    (job0, _, env0, _), (job1, _, env1, _), (cpu_job, _, cpu_env, _) = started
    assert (env0["CUDA_VISIBLE_DEVICES"], job0["gpu"]) == ("5", 5)
    assert (env1["CUDA_VISIBLE_DEVICES"], job1["gpu"]) == ("7", 7)
    assert env0["OMP_NUM_THREADS"] == "3" and job0["threads"] == 3
    assert cpu_job["gpu"] is None and cpu_env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
