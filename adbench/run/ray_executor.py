"""Ray as the cluster executor: each job a Ray task with the resources it needs.

What a long grid on a cluster needs, and how it is met here:

* **Resources per job** (``--cpus-per-job``, ``--gpus-per-job``, ``--memory-per-job`` GiB): Ray
  places a job only where they are free, so jobs do not pile onto one node. Ray sets
  ``OMP_NUM_THREADS`` to the task's CPUs; the job also sets torch's intra-op threads to them
  (``Job.threads``), and the record states them. Defaults: 4 CPUs, and 1 GPU per job when the
  cluster has GPUs and ``--device`` is not ``cpu``; memory is not reserved unless asked.
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
        self.cpus_per_job = float(cpus_per_job) if cpus_per_job else float(DEFAULT_CPUS_PER_JOB)
        self.gpus_per_job = gpus_per_job
        self.memory_per_job = memory_per_job
        self.job_timeout = job_timeout
        self.num_cpus = num_cpus
        self.retries = int(retries)

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
                ray.init(address=address, log_to_driver=True, include_dashboard=False)
                return cluster
            except Exception:  # noqa: BLE001 - the head is still starting
                if cluster is None or time.monotonic() > deadline or cluster.proc.poll() is not None:
                    if cluster is not None:
                        cluster.stop()
                    raise
                time.sleep(1.0)

    def _options(self, job: Job, has_gpu: bool) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.cpus_per_job, "max_retries": self.retries,
                                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(self.cpus_per_job)))}}}
        gpus = self.gpus_per_job if self.gpus_per_job is not None else (1 if has_gpu else 0)
        if job.device != "cpu" and gpus:
            opts["num_gpus"] = gpus
        if self.memory_per_job:
            opts["memory"] = int(self.memory_per_job * 2**30)
        return opts

    # --- running -----------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], on_done, start=lambda job: True) -> None:
        ray = self.ray
        cluster = self._connect()
        try:
            remote = ray.remote(max_calls=1)(_task)
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            pending: dict[Any, tuple[Job, str, float]] = {}
            for job in jobs:
                if not start(job):  # claimed when submitted: the claim covers its wait in the queue
                    continue
                spec = {**job.to_dict(), "progress": False, "threads": max(1, int(self.cpus_per_job)),
                        "device": "cuda" if job.device.startswith("cuda") else job.device}
                ref = remote.options(**self._options(job, has_gpu)).remote(spec, list(sys.path))
                pending[ref] = (job, now(), time.monotonic())
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                if not done:
                    self._cancel_overdue(pending, on_done)
                    continue
                ref = done[0]
                job, started, _t0 = pending.pop(ref)
                try:
                    records = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - worker lost after its retries, OOM...
                    text = str(exc).strip().splitlines()
                    records = failed_records(job, f"{type(exc).__name__}: {text[0] if text else ''}", started=started)
                on_done(job, records)
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.stop()

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
