"""Executors: where jobs run. Both hand each finished job's records to a callback at once, so
the runner writes them before the next job starts (a killed run loses only jobs in flight).

* ``LocalExecutor``: up to ``--jobs`` jobs at once (default: one per visible GPU, 1 on a CPU),
  each in its own child process, pinned to its GPU and given its share of the cores. Children are
  forked from a multiprocessing *forkserver* that imported torch, the metrics and the built-in
  methods once (``adbench.run.preload``), so a job starts in well under a second instead of paying
  ~2-3 CPU seconds of imports; the server itself is a clean process (started by spawn, no
  threads, no CUDA), so forking it is safe, unlike forking the CLI. Where forkserver is missing
  (Windows) children are spawned. A child that dies (segfault, OOM killer, ``os._exit``)
  becomes failed records naming the signal or exit code. The child's peak memory is its own
  (``VmHWM``, reset at fork/exec).
* ``RayExecutor`` (``adbench.run.ray_executor``): each job a Ray task running the same
  ``run_job_catching``, with the resources the job asks for.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Optional, Sequence

from adbench.jobs import Job
from adbench.results.records import failed_records, now

OnDone = Callable[[Job, list[dict[str, Any]]], None]
#: called right before a job starts; False skips it (another run holds its claim)
Start = Callable[[Job], bool]


def _always(job: Job) -> bool:
    return True


@dataclass
class _Running:
    job: Job
    proc: Any
    receiver: Any
    started: str
    deadline: Optional[float]
    slot: int


class LocalExecutor:
    """Up to ``n_jobs`` jobs at once on this machine, each in its own child process.

    Slot ``i`` owns GPU ``gpus[i % len(gpus)]`` (the child sees only it, through its own
    ``CUDA_VISIBLE_DEVICES``) and ``threads`` CPU threads (torch, OpenMP, MKL), so jobs that run
    at once neither share a GPU by accident nor oversubscribe the cores. A job running longer
    than ``job_timeout`` seconds is killed and recorded as failed; its last checkpoint stays.
    """

    name = "local"

    def __init__(self, n_jobs: int = 1, gpus: Sequence[int] = (), threads: Optional[int] = None,
                 job_timeout: Optional[float] = None, poll_seconds: float = 0.2, start_method: str | None = None):
        self.n_jobs = max(1, int(n_jobs))
        self.gpus = list(gpus)
        self.threads = threads
        self.job_timeout = job_timeout
        self.poll_seconds = poll_seconds
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.context = mp.get_context(start_method)
        if start_method == "forkserver":
            # "__main__" first: like spawn, the server imports the main module, which is what
            # makes `python cli.py` from a bare checkout map adbench.methods/datasets there too
            self.context.set_forkserver_preload(["__main__", "adbench.run.preload"])

    def run(self, jobs: Sequence[Job], on_done: OnDone, start: Start = _always) -> None:
        queue = list(jobs)
        running: dict[int, _Running] = {}
        free = list(range(self.n_jobs))
        try:
            while queue or running:
                while queue and free:
                    job = queue.pop(0)
                    if start(job):
                        slot = free.pop(0)
                        running[slot] = self._launch(job, slot)
                if not running:
                    continue
                wait([r.receiver for r in running.values()] + [r.proc.sentinel for r in running.values()],
                     timeout=self.poll_seconds)
                for slot, r in list(running.items()):
                    records = self._collect(r)
                    if records is None:
                        continue
                    del running[slot]
                    free.append(slot)
                    on_done(r.job, records)
        except BaseException:  # Ctrl-C, SIGTERM, a results folder gone: take every child down
            for r in running.values():
                _stop(r.proc)
                r.receiver.close()
            raise

    def run_one(self, job: Job) -> list[dict[str, Any]]:
        """One job, synchronously (tests and tools)."""
        out: list[list[dict[str, Any]]] = []
        self.run([job], lambda _job, records: out.append(records))
        return out[0]

    # --- one child ---------------------------------------------------------------------------------
    def _launch(self, job: Job, slot: int) -> _Running:
        job = dataclasses.replace(job, threads=job.threads or self.threads)
        environ = dict(os.environ)
        if self.gpus and job.device != "cpu":
            job = dataclasses.replace(job, gpu=self.gpus[slot % len(self.gpus)])
        if job.gpu is not None:
            environ["CUDA_VISIBLE_DEVICES"] = str(job.gpu)
        if job.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                environ[var] = str(job.threads)
        receiver, sender = self.context.Pipe(duplex=False)
        # The forkserver's environment and sys.path date from its start; a job sees the run's.
        proc = self.context.Process(target=_child_main, args=(job.to_dict(), sender, environ, list(sys.path)),
                                    name=f"adbench-job-{job.method}")
        proc.start()
        sender.close()
        deadline = time.monotonic() + self.job_timeout if self.job_timeout else None
        return _Running(job, proc, receiver, now(), deadline, slot)

    def _collect(self, r: _Running) -> Optional[list[dict[str, Any]]]:
        """The job's records once it ended (failed records when it died or timed out), else None."""
        records = None
        if r.receiver.poll(0):
            try:
                records = r.receiver.recv()
            except EOFError:  # child died without sending
                records = failed_records(r.job, _death_message(_exitcode(r.proc)), started=r.started)
        elif not r.proc.is_alive():
            if r.receiver.poll(0):
                return self._collect(r)
            records = failed_records(r.job, _death_message(_exitcode(r.proc)), started=r.started)
        elif r.deadline is not None and time.monotonic() > r.deadline:
            _stop(r.proc)
            records = failed_records(r.job, f"job ran longer than --job-timeout {self.job_timeout:g} s and was "
                                            f"stopped; its last checkpoint is kept, a rerun resumes from it",
                                     started=r.started)
        if records is None:
            return None
        r.proc.join()
        r.receiver.close()
        return records


def _exitcode(proc) -> Optional[int]:
    proc.join(5)
    return proc.exitcode


def _child_main(job_dict: dict[str, Any], conn, environ: dict[str, str], sys_path: list[str]) -> None:
    from adbench.run.worker import run_job_catching

    _die_with_run(conn)
    os.environ.clear()
    os.environ.update(environ)
    try:
        records = run_job_catching(job_dict, sys_path)
    except KeyboardInterrupt:
        os._exit(130)
    try:
        conn.send(records)
    except Exception as exc:  # noqa: BLE001 - an unpicklable value: say so instead of dying silently
        from adbench.jobs import Job

        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        conn.send(failed_records(Job(**job_dict), f"the job's records cannot be sent to the run "
                                 f"({type(exc).__name__}: {text})"))
    conn.close()


def _die_with_run(conn) -> None:
    """SIGKILL this job when the run that waits for it is gone (``kill -9 <cli pid>``).

    The result pipe's read end lives only in the run's process; when that process dies, the
    write end held here reports an error to poll(). (The forkserver cannot serve as the signal:
    every job it forks holds its liveness pipe open, so it outlives a killed run while jobs do.)
    """
    import select
    import threading

    if not hasattr(select, "poll"):
        return

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLERR | select.POLLHUP)
        while True:
            for _fd, event in poller.poll():
                if event & (select.POLLERR | select.POLLHUP):
                    os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="adbench-run-watch", daemon=True).start()


def _stop(proc) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _death_message(exitcode) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (likely killed by the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"job process died with {name}{hint}"
    return f"job process exited with code {exitcode} without a result"


def local_resources(opts) -> tuple[int, list[int], Optional[int]]:
    """(jobs at once, GPUs to pin them to, CPU threads per job) for the local executor.

    GPUs: ``--device cuda:N`` pins every job to the N-th visible GPU (torch's numbering, which
    counts within ``CUDA_VISIBLE_DEVICES``); ``cuda`` / ``auto`` use every visible GPU,
    one job per GPU by default; ``cpu`` none. ``--jobs`` overrides the count. Threads: the
    machine's cores divided between the jobs that run at once (unset for a single job: torch's
    own default, all cores)."""
    from adbench.run.gpus import visible_gpus

    if opts.device == "cpu":
        gpus: list[int] = []
    elif opts.device.startswith("cuda:"):
        gpus = [visible_gpus()[int(opts.device[5:])].index]
    else:
        gpus = [g.index for g in visible_gpus()]
    if opts.jobs:
        n_jobs = int(opts.jobs)
    elif gpus and not opts.device.startswith("cuda:"):
        n_jobs = len(gpus)  # one job per GPU
    else:
        n_jobs = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // n_jobs) if n_jobs > 1 else None
    return n_jobs, gpus, threads


def make_executor(opts):
    """The executor ``opts.executor`` names, sized from the run's options (``RunOptions``)."""
    from adbench.errors import ConfigError

    if opts.executor == "local":
        n_jobs, gpus, threads = local_resources(opts)
        return LocalExecutor(n_jobs=n_jobs, gpus=gpus, threads=threads, job_timeout=opts.job_timeout)
    if opts.executor == "ray":
        from adbench.run.ray_executor import RayExecutor

        return RayExecutor(cpus_per_job=opts.cpus_per_job, gpus_per_job=opts.gpus_per_job,
                           memory_per_job=opts.memory_per_job, job_timeout=opts.job_timeout)
    raise ConfigError(f"--executor {opts.executor!r}: expected local or ray")
