"""Issue 23, items 6-7: Ray jobs whose resources no node has.

``--executor ray`` with the default ``--cpus-per-job 4`` on a smaller machine used to hang
without a word: Ray queued a task no node could ever place. Now every job's request is compared
with the cluster's live nodes before any job is claimed (``unmet_request``: one ``error:`` line
naming the largest node, exit 2), a private cluster lowers the default CPUs to the machine's
(with a ``note:``), and queued jobs that get no resources print a ``waiting:`` line every
``WAIT_REPORT_S`` seconds (``waiting_line``).

Two real private clusters at most (about 10-20 s each here); the rest with fake ``ray`` data.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ray", reason="ray is not installed (pip install 'adbench[ray]')")

from adbench.errors import ConfigError  # noqa: E402
from adbench.run import ray_executor  # noqa: E402
from adbench.run.ray_executor import RayExecutor, unmet_request, waiting_line  # noqa: E402

GIB = 2**30


def _node(address: str, cpus: float, gpus: float = 0, memory_gib: float = 8.0, alive: bool = True) -> dict:
    """One entry of ``ray.nodes()`` (the fields the executor reads, as Ray 2.x spells them)."""
    resources = {"CPU": float(cpus), "memory": memory_gib * GIB, "object_store_memory": 1.0 * GIB,
                 f"node:{address}": 1.0}
    if gpus:
        resources["GPU"] = float(gpus)
    return {"NodeID": address.replace(".", "") * 4, "Alive": alive, "NodeManagerAddress": address,
            "Resources": resources}


# --------------------------------------------------------------------------------------------
# The node comparison, on fake ray.nodes() data
# --------------------------------------------------------------------------------------------
def test_a_request_no_node_meets_names_the_option_and_the_largest_node():
    small = [_node("10.0.0.5", 2, memory_gib=11.3)]
    assert unmet_request({"CPU": 8}, small) == (
        "--cpus-per-job 8: no node of the Ray cluster has that many CPUs "
        "(largest: 2 CPUs, 0 GPUs, 11.3 GiB memory on 10.0.0.5)")
    assert unmet_request({"CPU": 4}, small, defaults=["CPU"]) == (
        "--cpus-per-job 4 (the default): no node of the Ray cluster has that many CPUs "
        "(largest: 2 CPUs, 0 GPUs, 11.3 GiB memory on 10.0.0.5)")
    assert unmet_request({"CPU": 2}, small) is None
    assert unmet_request({"CPU": 0.5, "memory": 11 * GIB}, small) is None
    # a dead node does not count, however big it was
    assert unmet_request({"CPU": 8}, small + [_node("10.0.0.9", 64, alive=False)]).endswith("on 10.0.0.5)")
    assert unmet_request({"CPU": 1}, [_node("10.0.0.9", 64, alive=False)]) == (
        "--executor ray: the Ray cluster has no live node")


def test_gpus_and_memory_no_node_has():
    cpu_only = [_node("10.0.0.5", 2, memory_gib=11.3), _node("10.0.0.6", 16, memory_gib=62.5)]
    assert unmet_request({"CPU": 4, "GPU": 1}, cpu_only) == (
        "--gpus-per-job 1: no node of the Ray cluster has that many GPUs "
        "(largest: 16 CPUs, 0 GPUs, 62.5 GiB memory on 10.0.0.6)")
    assert unmet_request({"CPU": 1, "GPU": 0.5}, cpu_only).startswith("--gpus-per-job 0.5: ")
    # the largest node is the one with the most of what is lacking: here memory
    mixed = [_node("10.0.0.5", 32, memory_gib=30), _node("10.0.0.6", 4, gpus=1, memory_gib=60)]
    assert unmet_request({"CPU": 2, "memory": 64 * GIB}, mixed) == (
        "--memory-per-job 64: no node of the Ray cluster has that much memory "
        "(largest: 4 CPUs, 1 GPU, 60.0 GiB memory on 10.0.0.6)")
    # CPUs on one node, the GPU on another: no node has both
    assert unmet_request({"CPU": 8, "GPU": 1}, mixed) == (
        "--cpus-per-job 8 --gpus-per-job 1: no node of the Ray cluster has that many CPUs and that many GPUs "
        "at once (largest: 32 CPUs, 0 GPUs, 30.0 GiB memory on 10.0.0.5)")
    assert unmet_request({"CPU": 4, "GPU": 1, "memory": 60 * GIB}, mixed) is None


# --------------------------------------------------------------------------------------------
# The waiting line
# --------------------------------------------------------------------------------------------
def test_waiting_line_only_while_none_of_the_jobs_can_be_running():
    total = {"CPU": 4.0, "memory": 8.0 * GIB}
    # another user holds 2 of the 4 CPUs: the 4-CPU jobs cannot start, none of them runs
    free = {"CPU": 2.0, "memory": 8.0 * GIB}
    assert waiting_line(3, [{"CPU": 4.0}], free, total, 60.2) == (
        "waiting: 3 job(s) wait for resources, none finished for 60 s; each asks 4 CPUs; "
        "the Ray cluster has 2 CPUs, 0 GPUs, 8.0 GiB memory free")
    assert waiting_line(1, [{"CPU": 1.0, "GPU": 1.0, "memory": 2.0 * GIB}], free, total, 61) == (
        "waiting: 1 job(s) wait for resources, none finished for 61 s; each asks 1 CPU, 1 GPU, 2.0 GiB memory; "
        "the Ray cluster has 2 CPUs, 0 GPUs, 8.0 GiB memory free")
    # all 4 CPUs in use: one of the jobs may hold them, the rest queue behind it: no line
    assert waiting_line(3, [{"CPU": 4.0}], {"CPU": 0.0, "memory": 8.0 * GIB}, total, 600) is None
    assert waiting_line(0, [{"CPU": 4.0}], free, total, 600) is None
    assert waiting_line(2, [{"CPU": 0.0}], free, total, 600) is None  # asks nothing: it always fits


class _FakeRay:
    """What ``RayExecutor.run`` calls on ``ray``: an initialised cluster of ``nodes`` whose free
    resources are ``free``; each ``wait`` takes 10 ms and the ``finish_after``-th one returns a job."""

    def __init__(self, nodes, free, finish_after=10**9):
        self._nodes, self.free, self.finish_after = nodes, free, finish_after
        self.submitted, self.waits, self.shut_down = [], 0, False

    def is_initialized(self):
        return True

    def nodes(self):
        return self._nodes

    def cluster_resources(self):
        total: dict = {}
        for node in self._nodes:
            for key, value in node["Resources"].items():
                total[key] = total.get(key, 0.0) + value
        return total

    def available_resources(self):
        return dict(self.free)

    def remote(self, **_kwargs):
        fake = self

        class Remote:
            def options(self, **opts):
                fake.submitted.append(opts)
                return self

            def remote(self, spec, _path):
                return ("ref", len(fake.submitted))

        return lambda _fn: Remote()

    def wait(self, refs, num_returns=1, timeout=None):
        time.sleep(0.01)
        self.waits += 1
        return (refs[:1], refs[1:]) if self.waits >= self.finish_after else ([], refs)

    def get(self, ref):
        return [{"status": "ok"}]

    def cancel(self, ref, force=False):
        pass

    def shutdown(self):
        self.shut_down = True


def _fake_job():
    return SimpleNamespace(device="auto", label="kit_mean/obj_b", to_dict=lambda: {"method": "kit_mean"})


def _executor(fake, **kw):
    executor = RayExecutor(**kw)
    executor.ray, lines = fake, []
    executor.log = lines.append
    return executor, lines


def test_jobs_that_get_no_resources_say_so_every_interval(monkeypatch):
    monkeypatch.setattr(ray_executor, "WAIT_REPORT_S", 0.05)
    # a 4-CPU node of which another user holds 2: the default 4-CPU job fits the node, not now
    fake = _FakeRay([_node("10.0.0.5", 4)], free={"CPU": 2.0, "memory": 8.0 * GIB}, finish_after=25)
    executor, lines = _executor(fake)
    done = []
    executor.run([_fake_job()], lambda job, records: done.append(records))
    assert done == [[{"status": "ok"}]] and fake.shut_down
    assert fake.submitted[0]["num_cpus"] == 4.0 and "num_gpus" not in fake.submitted[0]
    assert 2 <= len(lines) <= 6, lines  # one per 50 ms of the ~250 ms wait, not one per poll
    for line in lines:
        assert re.fullmatch(r"waiting: 1 job\(s\) wait for resources, none finished for \d+ s; each asks 4 CPUs; "
                            r"the Ray cluster has 2 CPUs, 0 GPUs, 8\.0 GiB memory free", line), line
    # the same wait with all 4 CPUs in use (a job of the run may hold them): a queue, no line
    busy = _FakeRay([_node("10.0.0.5", 4)], free={"CPU": 0.0, "memory": 8.0 * GIB}, finish_after=25)
    executor, lines = _executor(busy)
    executor.run([_fake_job()], lambda job, records: None)
    assert lines == []


def test_a_request_no_node_meets_stops_before_any_job_is_claimed():
    gpu_less = _FakeRay([_node("10.0.0.5", 2, memory_gib=11.3)], free={})
    claimed = []
    for kw, message in (
            ({"cpus_per_job": 8}, "--cpus-per-job 8: no node of the Ray cluster has that many CPUs"),
            ({"cpus_per_job": 1, "gpus_per_job": 1}, "--gpus-per-job 1: no node of the Ray cluster has that many GPUs"),
            ({"cpus_per_job": 1, "memory_per_job": 16}, "--memory-per-job 16: no node of the Ray cluster has that much"),
            ({}, "--cpus-per-job 4 (the default): no node")):  # the default is only lowered on a private cluster
        executor, _ = _executor(gpu_less, **kw)
        with pytest.raises(ConfigError) as info:
            executor.run([_fake_job()], lambda job, records: None, start=lambda job: claimed.append(job) or True)
        assert str(info.value).startswith(message), str(info.value)
        assert str(info.value).endswith("(largest: 2 CPUs, 0 GPUs, 11.3 GiB memory on 10.0.0.5)")
    assert claimed == [] and gpu_less.submitted == [] and gpu_less.shut_down
    # --device cpu asks for no GPU, whatever --gpus-per-job says; 0 CPUs is the default, no crash
    executor, _ = _executor(gpu_less, cpus_per_job=0, gpus_per_job=1)
    with pytest.raises(ConfigError, match="--cpus-per-job 4 \\(the default\\)"):
        executor.run([_fake_job()], lambda job, records: None)
    fits = _FakeRay([_node("10.0.0.5", 2)], free={"CPU": 2.0}, finish_after=1)
    executor, lines = _executor(fits, cpus_per_job=2, gpus_per_job=1)
    executor.run([SimpleNamespace(**{**vars(_fake_job()), "device": "cpu"})], lambda job, records: None)
    assert fits.submitted[0]["num_cpus"] == 2.0 and "num_gpus" not in fits.submitted[0] and lines == []


# --------------------------------------------------------------------------------------------
# Real private clusters (two): the default fitted to this machine, a user-given 8 refused
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def clusters(monkeypatch):
    """The private clusters the runs start, to check afterwards that none of their processes is left."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = []

    class Recorded(ray_executor._LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(ray_executor, "_LocalCluster", Recorded)
    return started


def _assert_gone(cluster) -> None:
    assert cluster.proc.poll() is not None, "the private Ray cluster is still running"
    left = subprocess.run(["pgrep", "-f", f"[:=]{cluster.port}( |$)"], capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the private Ray cluster (port {cluster.port}) outlived the run: {left}"


def _run_cli(results, *args):
    from click.testing import CliRunner

    from adbench.cli import main

    argv = ["run", "--plugin", "adbench_testkit", "--results", str(results), "-q", *args]
    return CliRunner().invoke(main, argv)


def test_default_cpus_fit_this_machine_and_too_many_stop_before_any_job(kit_data, clusters, tmp_path):
    import json

    grid = ("--method", "kit_mean", "--dataset", "kitgen", "--data-root", str(kit_data), "--category", "obj_b",
            "--executor", "ray")
    results = tmp_path / "res"
    result = _run_cli(results, *grid)
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(clusters) == 1
    _assert_gone(clusters[0])
    (record,) = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert record["status"] == "ok"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: --cpus-per-job")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cores < ray_executor.DEFAULT_CPUS_PER_JOB:
        (note,) = notes
        match = re.fullmatch(r"note: --cpus-per-job (\d+): the default \(4\) lowered to the CPUs this machine "
                             r"gives Ray", note)
        assert match, note
        assert record["torch_threads"] == int(match.group(1)) < 4
    else:
        assert notes == []

    # a user-given value above every node: one error line before any job, nothing written
    too_many = str(max(8, (os.cpu_count() or 1) + 1))
    results = tmp_path / "res_too_many"
    result = _run_cli(results, *grid, "--cpus-per-job", too_many)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: --cpus-per-job {too_many}: no node of the Ray cluster has that many CPUs "
                        r"\(largest: \d+ CPUs?, 0 GPUs, \d+\.\d GiB memory on \S+\)", line), line
    assert not results.exists() or not any(results.rglob("*.json"))
    assert len(clusters) == 2
    _assert_gone(clusters[1])
