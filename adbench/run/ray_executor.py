"""Ray as the cluster executor: each job a Ray task with the resources it needs.

What a long grid on a cluster needs, and how it is met here:

* **Resources per job** (``--cpus-per-job``, ``--gpus-per-job``, ``--memory-per-job`` GiB): Ray
  places a job only where they are free, so jobs do not pile onto one node. Ray sets
  ``OMP_NUM_THREADS`` to the task's CPUs; the job also sets torch's intra-op threads to them
  (``Job.threads``), and the record states them. Defaults: 4 CPUs (0 or unset: the default), and
  1 GPU per job when the cluster has GPUs and ``--device`` is not ``cpu``; memory is not reserved
  unless asked. On the private cluster of a run (no ``$RAY_ADDRESS``) the default CPUs are at most
  the machine's, with a ``note:`` line when lowered.
* **No silent wait**: before any job is claimed or submitted, each job's request is compared with
  the cluster's live nodes (``unmet_request``); one that no node can meet (a user-given
  ``--cpus-per-job 8`` on 2-CPU nodes, ``--gpus-per-job`` without GPUs, ``--memory-per-job`` above
  every node's) is a ``ConfigError`` naming the largest node, and the cluster is let go. While
  jobs are queued and none of them can be running (the resources in use cannot hold one job's
  request) and none finished, a ``waiting:`` line every ``WAIT_REPORT_S`` seconds says how many
  wait, what they ask and what the cluster has free (``waiting_line``).
* **The GPU and node of each job**: Ray gives the task its GPU through ``CUDA_VISIBLE_DEVICES``;
  the task passes Ray's GPU id on as ``Job.gpu`` and the record names node and GPU
  (``host.hostname``, ``gpu: {index, name, uuid}``). ``--device cuda:N`` means "a GPU" under
  Ray (the cluster chooses which).
* **Retries resume**: a task whose worker dies (a node lost, the OOM killer) is retried
  (``max_retries``); the job's checkpoint path is part of the job, so the retry resumes from the
  last checkpoint. Checkpoints must go where workers can write: the results folder on a shared
  filesystem, or ``--checkpoint-dir``; a worker that cannot write there warns and trains without.
* **The driver stays light**: it never initialises CUDA (``adbench.run.gpus``; failed records built
  here do not ask torch for a GPU name), and Ray is not started when no job is left to run.
* **Ray ends with the run**: without ``$RAY_ADDRESS`` a private local cluster is started as a
  ``ray start --head --block`` child that receives SIGTERM when the run dies (Linux
  ``PR_SET_PDEATHSIG``), even after ``kill -9`` of the run, and stops its Ray processes; after
  Ctrl-C or a normal end it is stopped the same way.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from adbench.jobs import Job
from adbench.results.records import failed_records, now

DEFAULT_CPUS_PER_JOB = 4
RETRIES = 2
#: seconds between two ``waiting:`` lines while queued jobs get no resources (tests shorten it)
WAIT_REPORT_S = 60.0
#: the Ray resources a job asks for: the option that sets each, and what a node lacks
_REQUEST_NAMES = {"CPU": ("--cpus-per-job", "that many CPUs"), "GPU": ("--gpus-per-job", "that many GPUs"),
                  "memory": ("--memory-per-job", "that much memory")}


def _task(job_dict: dict[str, Any], sys_path: list[str]) -> list[dict[str, Any]]:
    """What runs in a Ray worker: the job, told which GPU Ray gave it."""
    import ray

    from adbench.run.worker import run_job_catching

    gpu_ids = ray.get_gpu_ids()
    if gpu_ids and job_dict.get("device") != "cpu":
        try:
            job_dict = {**job_dict, "gpu": int(gpu_ids[0])}
        except (TypeError, ValueError):  # a GPU named by UUID: the record keeps the device's index
            pass
    return run_job_catching(job_dict, sys_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent (the run) dies, whatever killed it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _use_token(token: Optional[dict[str, Optional[str]]]) -> dict[str, Optional[str]]:
    """Set (or, given the previous values, restore) this process's Ray token settings.

    Ray >= 2.5x authenticates every connection with a token when ``RAY_AUTH_MODE=token``, and
    ``ray start`` turns that on by itself when ``~/.ray/auth_token`` exists, while ``ray.init``
    in a driver may not: the driver is then refused ("InvalidAuthToken"). The private cluster
    therefore gets its own random token, given to the head and to this driver alike, and no file
    in the user's home is read or written.
    """
    previous = {name: os.environ.get(name) for name in _TOKEN_VARS}
    for name in _TOKEN_VARS:
        value = (token or {}).get(name)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:  # Ray caches the mode and the token at first use: make it read them again
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # an older Ray without token authentication
        pass
    return previous


_TOKEN_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class _LocalCluster:
    """A private single-node Ray cluster tied to this process's life."""

    def __init__(self, num_cpus: Optional[int] = None):
        import secrets

        ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
        self.token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_AUTH_TOKEN_PATH": None}
        environ = {k: v for k, v in os.environ.items() if k not in _TOKEN_VARS}
        environ.update({k: v for k, v in self.token.items() if v is not None})
        self.port = _free_port()
        cmd = [ray_cli, "start", "--head", "--block", f"--port={self.port}", "--include-dashboard=false",
               "--disable-usage-stats"]
        if num_cpus:
            cmd.append(f"--num-cpus={int(num_cpus)}")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environ,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                                     start_new_session=True)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if getattr(self, "previous_token", None) is not None:
            _use_token(self.previous_token)
            self.previous_token = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _say(line: str) -> None:
    """One line on stderr, above the run's progress bar when there is one."""
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:
        print(line, file=sys.stderr, flush=True)


# --- what a job asks of a node -------------------------------------------------------------------
def _alive(node: dict[str, Any]) -> bool:
    return bool(node.get("Alive", node.get("alive", False)))


def _amount(resource: str, value: float) -> str:
    """``4 CPUs``, ``1 GPU``, ``11.3 GiB memory`` (memory given in bytes)."""
    if resource == "memory":
        return f"{value / 2**30:.1f} GiB memory"
    return f"{value:g} {resource if value == 1 else resource + 's'}"


def describe_resources(resources: dict[str, float]) -> str:
    """CPUs, GPUs and memory of a node's (or the cluster's) Ray resources."""
    return ", ".join(_amount(key, float(resources.get(key, 0) or 0)) for key in _REQUEST_NAMES)


def unmet_request(request: dict[str, float], nodes: Sequence[dict[str, Any]],
                  defaults: Sequence[str] = ()) -> Optional[str]:
    """Why no live node of ``nodes`` (``ray.nodes()``) can run a job that asks ``request`` (Ray
    resource name -> amount, memory in bytes), as a one-line message; None when a node can.

    The message names the options at fault (``defaults``: resources the user did not give) and
    the largest node, e.g. ``--cpus-per-job 8: no node of the Ray cluster has that many CPUs
    (largest: 2 CPUs, 0 GPUs, 11.3 GiB memory on 10.0.0.5)``.
    """
    asked = {key: float(value) for key, value in request.items() if value}
    alive = [node for node in nodes if _alive(node)]
    if not alive:
        return "--executor ray: the Ray cluster has no live node"

    def has(node: dict[str, Any], key: str) -> float:
        return float((node.get("Resources") or {}).get(key, 0) or 0)

    if any(all(has(node, key) >= value for key, value in asked.items()) for node in alive):
        return None
    short = [key for key, value in asked.items() if all(has(node, key) < value for node in alive)]
    together = not short  # each resource is somewhere, but not all of them on one node
    short = short or list(asked)
    largest = max(alive, key=lambda node: tuple(has(node, key) for key in [*short, *_REQUEST_NAMES]))
    options = " ".join(f"{_REQUEST_NAMES[key][0]} {asked[key] / (2**30 if key == 'memory' else 1):g}"
                       + (" (the default)" if key in defaults else "") for key in short)
    what = " and ".join(_REQUEST_NAMES[key][1] for key in short) + (" at once" if together else "")
    where = largest.get("NodeManagerAddress") or largest.get("NodeName") or largest.get("NodeID", "?")
    return (f"{options}: no node of the Ray cluster has {what} "
            f"(largest: {describe_resources(largest.get('Resources') or {})} on {where})")


def waiting_line(n_waiting: int, requests: Sequence[dict[str, float]], free: dict[str, float],
                 total: dict[str, float], seconds: float) -> Optional[str]:
    """The ``waiting:`` line when ``n_waiting`` jobs are queued and none of them can be running:
    the resources in use (``total`` - ``free``, ``ray.cluster_resources()`` and
    ``ray.available_resources()``) cannot hold one job's request. None otherwise."""
    asked = [{key: float(value) for key, value in request.items() if value} for request in requests]
    asked = [request for request in asked if request]
    if not n_waiting or not asked:
        return None

    def in_use(key: str) -> float:
        return float(total.get(key, 0) or 0) - float(free.get(key, 0) or 0)

    if any(all(in_use(key) >= value - 1e-6 for key, value in request.items()) for request in asked):
        return None  # one of them may be running: a queue, not a wait for what never comes
    each = " or ".join(", ".join(_amount(key, value) for key, value in request.items()) for request in asked)
    return (f"waiting: {n_waiting} job(s) wait for resources, none finished for {seconds:.0f} s; each asks "
            f"{each}; the Ray cluster has {describe_resources(free)} free")


class _WaitWatch:
    """Every ``WAIT_REPORT_S`` seconds without a job finishing: ``waiting_line``, if any."""

    def __init__(self, ray, log, requests: Sequence[dict[str, float]]):
        self.ray, self.log, self.requests = ray, log, list(requests)
        self.progress_at = self.checked_at = time.monotonic()

    def progressed(self) -> None:
        self.progress_at = self.checked_at = time.monotonic()

    def check(self, n_waiting: int) -> None:
        t = time.monotonic()
        if t - self.checked_at < WAIT_REPORT_S:
            return
        self.checked_at = t
        line = waiting_line(n_waiting, self.requests, self.ray.available_resources(),
                            self.ray.cluster_resources(), t - self.progress_at)
        if line:
            self.log(line)


class RayExecutor:
    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_job: Optional[float] = None,
                 gpus_per_job: Optional[float] = None, memory_per_job: Optional[float] = None,
                 job_timeout: Optional[float] = None, num_cpus: Optional[int] = None, retries: int = RETRIES):
        try:
            import ray
        except ImportError:
            from adbench.errors import ConfigError

            raise ConfigError("--executor ray: ray is not installed (pip install 'adbench[ray]')") from None
        self.ray = ray
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self.cpus_given = bool(cpus_per_job)  # 0 or None: the default (lowered to a private cluster's CPUs)
        self.cpus_per_job = float(cpus_per_job) if cpus_per_job else float(DEFAULT_CPUS_PER_JOB)
        self.gpus_per_job = gpus_per_job
        self.memory_per_job = memory_per_job
        self.job_timeout = job_timeout
        self.num_cpus = num_cpus
        self.retries = int(retries)
        self.log = _say

    # --- cluster ---------------------------------------------------------------------------------
    def _connect(self):
        ray = self.ray
        if ray.is_initialized():
            return None
        cluster = None
        address = self.address
        if not address:
            cluster = _LocalCluster(self.num_cpus)
            cluster.previous_token = _use_token(cluster.token)
            address = cluster.address
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=address, log_to_driver=True, include_dashboard=False, logging_level=logging.WARNING)
                return cluster
            except Exception:  # noqa: BLE001 - the head is still starting
                if cluster is None or time.monotonic() > deadline or cluster.proc.poll() is not None:
                    if cluster is not None:
                        cluster.stop()
                    raise
                time.sleep(1.0)

    def _fit_to_cluster(self, jobs: Sequence[Job], private: bool) -> tuple[bool, list[dict[str, float]]]:
        """Before any job is claimed: on a private cluster the default CPUs lowered to the machine's;
        every job's request checked against the live nodes (``ConfigError`` when none can meet it).
        Returns whether the cluster has GPUs and the distinct requests."""
        from adbench.errors import ConfigError

        nodes = self.ray.nodes()
        alive = [node.get("Resources") or {} for node in nodes if _alive(node)]
        if private and not self.cpus_given:
            cpus = max((float(resources.get("CPU", 0) or 0) for resources in alive), default=0.0)
            if 0 < cpus < self.cpus_per_job:
                self.log(f"note: --cpus-per-job {cpus:g}: the default ({DEFAULT_CPUS_PER_JOB}) lowered to the CPUs "
                         f"this machine gives Ray")
                self.cpus_per_job = cpus
        has_gpu = any(float(resources.get("GPU", 0) or 0) > 0 for resources in alive)
        requests: list[dict[str, float]] = []
        for job in jobs:
            request = self.job_request(job, has_gpu)
            if request not in requests:
                requests.append(request)
        defaults = [key for key, given in (("CPU", self.cpus_given), ("GPU", self.gpus_per_job is not None))
                    if not given]
        problems = list(dict.fromkeys(p for p in (unmet_request(r, nodes, defaults) for r in requests) if p))
        if problems:
            raise ConfigError(problems[0], problems=problems)
        return has_gpu, requests

    def job_request(self, job: Job, has_gpu: bool) -> dict[str, float]:
        """What ``job`` asks of a node, by Ray resource name (memory in bytes)."""
        request = {"CPU": self.cpus_per_job}
        gpus = self.gpus_per_job if self.gpus_per_job is not None else (1 if has_gpu else 0)
        if job.device != "cpu" and gpus:
            request["GPU"] = float(gpus)
        if self.memory_per_job:
            request["memory"] = float(int(self.memory_per_job * 2**30))
        return request

    def _options(self, job: Job, has_gpu: bool) -> dict[str, Any]:
        request = self.job_request(job, has_gpu)
        opts: dict[str, Any] = {"num_cpus": request["CPU"], "max_retries": self.retries,
                                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(self.cpus_per_job)))}}}
        if "GPU" in request:
            opts["num_gpus"] = request["GPU"]
        if "memory" in request:
            opts["memory"] = int(request["memory"])
        return opts

    # --- running -----------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], on_done, start=lambda job: True) -> None:
        ray = self.ray
        cluster = self._connect()
        try:
            has_gpu, requests = self._fit_to_cluster(jobs, private=cluster is not None)
            remote = ray.remote(max_calls=1)(_task)
            pending: dict[Any, tuple[Job, str, float]] = {}
            for job in jobs:
                if not start(job):  # claimed when submitted: the claim covers its wait in the queue
                    continue
                spec = {**job.to_dict(), "progress": False, "threads": max(1, int(self.cpus_per_job)),
                        "device": "cuda" if job.device.startswith("cuda") else job.device}
                ref = remote.options(**self._options(job, has_gpu)).remote(spec, list(sys.path))
                pending[ref] = (job, now(), time.monotonic())
            self._collect(pending, on_done, _WaitWatch(ray, self.log, requests))
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.stop()

    def _collect(self, pending: dict[Any, tuple[Job, str, float]], on_done, watch: _WaitWatch) -> None:
        """Each job's records to ``on_done`` as it ends; a ``waiting:`` line while none can run."""
        ray = self.ray
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not done:
                self._cancel_overdue(pending, on_done)
                watch.check(len(pending))
                continue
            watch.progressed()
            ref = done[0]
            job, started, _t0 = pending.pop(ref)
            try:
                records = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - worker lost after its retries, OOM...
                text = str(exc).strip().splitlines()
                records = failed_records(job, f"{type(exc).__name__}: {text[0] if text else ''}", started=started)
            on_done(job, records)

    def _cancel_overdue(self, pending, on_done) -> None:
        """``--job-timeout`` counts from submission under Ray (a queued job waits for resources)."""
        if not self.job_timeout:
            return
        for ref, (job, started, t0) in list(pending.items()):
            if time.monotonic() - t0 > self.job_timeout:
                self.ray.cancel(ref, force=True)
                pending.pop(ref)
                on_done(job, failed_records(job, f"job ran longer than --job-timeout {self.job_timeout:g} s and was "
                                                 f"stopped; its last checkpoint is kept, a rerun resumes from it",
                                            started=started))
