"""The run's side of a finished job: check its records, store them, say what happened.

Whatever executor ran a job (a local child process, a Ray worker on another machine), its
records come back to the run's process and pass through ``ResultWriter.accept``:

1. every record is checked like any record read from disk (``record_checks``); a job that
   returns an unusable record (a plugin's bad metric, an impossible value) is stored as failed
   with the reason, never as a good result;
2. saved predictions are written first, so a record never names a missing file;
3. the record is written atomically; a failed attempt never replaces an ok record of the same
   job (``Store.write`` puts it beside it as ``<stem>.failed.json``, and the line says so);
4. once a job's records are all written ok, its checkpoint is removed (``--keep-checkpoints``
   keeps it: it is then the trained model); a failed job keeps its last one for the rerun.
   Removing it never fails the finished job: a checkpoint that cannot be removed (a read-only
   folder, a path below a regular file) is one ``warning:`` line, the file stays and the run
   goes on (``adbench.training.checkpoints.remove``);
5. a write that fails (disk full, folder made read-only mid-run) raises ``ResultsWriteError``
   naming the file: the run stops cleanly, every record written before stays intact, and the
   same command resumes once the cause is fixed.
"""
from __future__ import annotations

from typing import Any

from adbench.results import predictions
from adbench.errors import ResultsWriteError
from adbench.jobs import Job
from adbench.results.predictions import ATTACHED
from adbench.results.checks import problem_of
from adbench.results.store import FAILED_SUFFIX, Store


class ResultWriter:
    def __init__(self, store: Store, keep_checkpoints: bool = False):
        self.store = store
        self.keep_checkpoints = keep_checkpoints

    def accept(self, job: Job, records: list[dict[str, Any]]) -> list[str]:
        """Check and write ``records`` of ``job``; returns notes for the user (e.g. where a
        failed attempt went because an ok record was kept)."""
        notes: list[str] = []
        for record in records:
            arrays = record.pop(ATTACHED, None)
            problem = problem_of(record)
            if problem is not None:
                arrays = None
                record.update(status="failed", error=f"the job returned an unusable record: {problem}",
                              metrics={k: None for k in (record.get("metrics") or {})}
                              if isinstance(record.get("metrics"), dict) else {})
                if problem_of(record) is not None:  # identity itself broken: rebuild from the job
                    record = _rebuilt_failed(job, record, problem)
            if arrays is not None and record.get("status") == "ok":
                target = self.store.path_for(job, record["category"])
                try:
                    record["predictions"] = predictions.save(target, arrays).name
                except OSError as exc:
                    raise ResultsWriteError(f"cannot write {predictions.path_for(target)}: "
                                            f"{exc.strerror or exc}") from None
            path = self.store.write(record)
            if path.name.endswith(FAILED_SUFFIX):
                notes.append(f"{job.label}: kept the earlier ok record; this failed attempt is in {path.name}")
        if job.checkpoint_path and not self.keep_checkpoints and all(r.get("status") == "ok" for r in records):
            from pathlib import Path

            from adbench.training.checkpoints import remove

            # its records are written: the checkpoint is done with (a failure is one warning line)
            remove(Path(job.checkpoint_path))
        return notes


def _rebuilt_failed(job: Job, record: dict[str, Any], problem: str) -> dict[str, Any]:
    from adbench.results.records import failed_records

    category = record.get("category") if isinstance(record.get("category"), str) else job.categories[0]
    if category not in job.categories:
        category = job.categories[0]
    fresh = [r for r in failed_records(job, f"the job returned an unusable record: {problem}")
             if r["category"] == category]
    return fresh[0]

