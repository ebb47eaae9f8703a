"""Executors: where jobs run. Both hand each finished job's records to a callback at once, so
the runner writes them before the next job starts (a killed run loses only jobs in flight).

* ``LocalExecutor``: jobs one after another, each in its own child process. Children are
  forked from a multiprocessing *forkserver* that imported torch, the metrics and the built-in
  methods once (``adbench.preload``), so a job starts in well under a second instead of paying
  ~2-3 CPU seconds of imports; the server itself is a clean process (started by spawn, no
  threads, no CUDA), so forking it is safe, unlike forking the CLI. Where forkserver is missing
  (Windows) children are spawned. A child that dies (segfault, OOM killer, ``os._exit``)
  becomes failed records naming the signal or exit code. The child's peak memory is its own
  (``VmHWM``, reset at fork/exec).
* ``RayExecutor``: each job is a Ray task running the same ``run_job_catching``, with
  ``max_calls=1`` so every job gets a fresh worker process (and one GPU when the cluster has
  GPUs and ``--device`` is not cpu). ``ray.init(address=...)`` uses
  ``$RAY_ADDRESS`` when set (an existing cluster), else starts a local one.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from typing import Any, Callable, Sequence

from adbench.jobs import Job
from adbench.records import failed_records, now

OnDone = Callable[[Job, list[dict[str, Any]]], None]
#: called right before a job starts; False skips it (another run holds its claim)
Start = Callable[[Job], bool]


def _always(job: Job) -> bool:
    return True


class LocalExecutor:
    name = "local"

    def __init__(self, poll_seconds: float = 0.2, start_method: str | None = None):
        self.poll_seconds = poll_seconds
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self.context = mp.get_context(start_method)
        if start_method == "forkserver":
            # "__main__" first: like spawn, the server imports the main module, which is what
            # makes `python cli.py` from a bare checkout map adbench.methods/datasets there too
            self.context.set_forkserver_preload(["__main__", "adbench.preload"])

    def run(self, jobs: Sequence[Job], on_done: OnDone, start: Start = _always) -> None:
        for job in jobs:
            if start(job):
                on_done(job, self.run_one(job))

    def run_one(self, job: Job) -> list[dict[str, Any]]:
        started = now()
        receiver, sender = self.context.Pipe(duplex=False)
        # The forkserver's environment and sys.path date from its start; a job sees the run's.
        proc = self.context.Process(
            target=_child_main, args=(job.to_dict(), sender, dict(os.environ), list(sys.path)),
            name=f"adbench-job-{job.method}",
        )
        proc.start()
        sender.close()
        records = None
        try:
            while True:
                if receiver.poll(self.poll_seconds):
                    try:
                        records = receiver.recv()
                    except EOFError:  # child died without sending
                        records = None
                    break
                if not proc.is_alive():
                    if receiver.poll(0):
                        continue
                    break
            proc.join()
        except BaseException:  # Ctrl-C / SystemExit: take the child down with us
            _stop(proc)
            raise
        finally:
            receiver.close()
        if records is None:
            return failed_records(job, _death_message(proc.exitcode), started=started)
        return records


def _child_main(job_dict: dict[str, Any], conn, environ: dict[str, str], sys_path: list[str]) -> None:
    from adbench.worker import run_job_catching

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


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            from adbench.errors import ConfigError

            raise ConfigError("--executor ray: ray is not installed (pip install 'adbench[ray]')") from None
        self.ray = ray
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self.num_cpus = num_cpus

    def run(self, jobs: Sequence[Job], on_done: OnDone, start: Start = _always) -> None:
        ray = self.ray
        started_here = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if self.address:
                kwargs["address"] = self.address
            elif self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(**kwargs)
            started_here = True
        try:
            from adbench.worker import run_job_catching

            remote = ray.remote(max_calls=1, num_cpus=1)(run_job_catching)
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            pending = {}
            for job in jobs:
                if not start(job):  # claimed when submitted: the claim covers its wait in the queue
                    continue
                task = remote.options(num_gpus=1) if has_gpu and job.device != "cpu" else remote
                spec = {**job.to_dict(), "progress": False}  # bars do not survive Ray's log forwarding
                pending[task.remote(spec, list(sys.path))] = (job, now())
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                job, started = pending.pop(ref)
                try:
                    records = ray.get(ref)
                except Exception as exc:  # worker crash, OOM kill, serialization error
                    text = str(exc).strip().splitlines()
                    records = failed_records(job, f"{type(exc).__name__}: {text[0] if text else ''}",
                                             started=started)
                on_done(job, records)
        finally:
            if started_here:
                ray.shutdown()


def make_executor(name: str):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor()
    from adbench.errors import ConfigError

    raise ConfigError(f"--executor {name!r}: expected local or ray")
