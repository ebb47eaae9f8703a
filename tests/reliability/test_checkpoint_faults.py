"""Reliability: checkpoints that nothing can poison (issue 23, cases 1, 2, 4, 9, 11).

Each case reproduces its trigger and asserts what a user sees (one line naming the file and the
reason, no traceback, the exit code) and that nothing finished is lost. Cases 1 and 2 also
assert that the job, started fresh, gives exactly the metrics, predictions and loss history of
a run that never had the checkpoint (CPU, same seed and threads).

The job-level cases (1, 2, 9, 11) run a real job in this process through
``run_job_catching`` (what every executor runs in its child): the job's own stderr lines are
then capturable, and faults can be injected with a monkeypatch. Case 4 is a fault of the run's
process (removing a finished job's checkpoint), so it goes through the CLI (click's runner).
"""
from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import numpy as np
import pytest
import torch

from adbench.results.predictions import ATTACHED
from adbench.run.runner import RunOptions, plan_run
from adbench.run.worker import run_job_catching
from adbench.training.checkpoints import CheckpointFile, Header, read_header


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A job run in this process sets torch's thread count (``set_up_process``): put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def job(tmp_path, kit_data):
    """The ``kit_trained`` job of ``obj_b`` (9 SGD steps), as ``adbench run`` plans it, with a
    checkpoint after every step, predictions kept (to compare them) and 1 thread."""
    plan = plan_run(RunOptions(method="kit_trained", dataset="kitgen", data_root=str(kit_data), category="obj_b",
                               results=str(tmp_path / "res"), plugins=["adbench_testkit"], progress=False,
                               checkpoint_every=1e-6, save_predictions=True))
    (planned,) = plan.jobs
    return dataclasses.replace(planned, threads=1)


def _run(job, capsys) -> tuple[dict, list[str]]:
    """Run ``job`` in this process: (its one record, the lines it wrote to stderr)."""
    capsys.readouterr()
    (record,) = run_job_catching(job.to_dict())
    return record, capsys.readouterr().err.splitlines()


def _rewrite(path: Path, damage) -> None:
    """Change the checkpoint's state with ``damage(state)`` and write it back with a valid
    header and checksum (``CheckpointFile.save``): only its contents are wrong."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    damage(payload["state"])
    header = Header(**payload["header"])
    assert CheckpointFile(path, header.identity, header.version).save(header, payload["state"])


def _assert_same_as_fresh(record: dict, fresh: dict) -> None:
    assert record["status"] == "ok" and record.get("traceback") is None, record.get("error")
    assert record["resumed_from"] is None and record["steps_this_attempt"] == fresh["steps_this_attempt"] == 9
    assert record["metrics"] == fresh["metrics"]
    assert record["record_extras"]["loss_history"] == fresh["record_extras"]["loss_history"]
    for key, value in fresh[ATTACHED].items():
        assert np.array_equal(record[ATTACHED][key], value), key


def _aside(path: Path, n: str = "") -> Path:
    return path.with_name(path.name + ".invalid" + n)


# --- case 1: a checkpoint whose state does not fit the model ----------------------------------
def test_case1_a_checkpoint_of_another_shape_is_set_aside_and_the_job_starts_fresh(job, capsys):
    fresh, _ = _run(job, capsys)  # also leaves its final checkpoint (nothing removes it here)
    path = Path(job.checkpoint_path)
    # an architecture change without a VERSION bump: one tensor of another shape
    _rewrite(path, lambda state: state["finished"]["train"]["modules"]["net"].update(weight=torch.zeros(3, 3, 1, 2)))

    record, lines = _run(job, capsys)
    assert lines == [f"warning: checkpoint {path} does not fit the model (phase train: module net: weight is "
                     f"[3, 3, 1, 2] in the checkpoint, [3, 3, 1, 1] in the model); moved aside to {path.name}.invalid; "
                     f"the job starts over"]
    _assert_same_as_fresh(record, fresh)
    assert _aside(path).is_file() and read_header(_aside(path)) is not None, "kept, with its header"
    assert read_header(path).final, "the fresh run wrote its own checkpoint in its place"


def test_case1_a_restore_that_fails_half_way_runs_the_whole_job_again(job, capsys, monkeypatch):
    """What checking shapes cannot catch: the modules are restored, then a random state does
    not load. The attempt's modules and random states are already changed, so the job runs
    again from scratch in the same process (once), and still equals a fresh run."""
    from adbench.run import worker

    fresh, _ = _run(job, capsys)
    path = Path(job.checkpoint_path)
    _aside(path).write_bytes(b"an earlier one")  # taken: this one goes to .invalid.1
    _rewrite(path, lambda state: state["finished"]["train"]["rng"]["numpy"].update(
        keys=state["finished"]["train"]["rng"]["numpy"]["keys"][:10]))
    attempts = []
    real_attempt = worker.run_attempt
    monkeypatch.setattr(worker, "run_attempt", lambda *a, **kw: attempts.append(kw) or real_attempt(*a, **kw))

    record, lines = _run(job, capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: checkpoint {path} does not load into the model (phase train: IndexError: ")
    assert lines[0].endswith(f"); moved aside to {path.name}.invalid.1; the job starts over")
    assert attempts == [{}, {"fresh": True}]
    _assert_same_as_fresh(record, fresh)
    assert _aside(path).read_bytes() == b"an earlier one" and _aside(path, ".1").is_file()


# --- case 2: one flipped bit in a tensor's data ---------------------------------------------------
def test_case2_a_flipped_bit_fails_the_checksum_and_the_job_starts_fresh(job, capsys):
    fresh, _ = _run(job, capsys)
    path = Path(job.checkpoint_path)
    weight = torch.load(path, weights_only=True)["state"]["finished"]["train"]["modules"]["net"]["weight"]
    data = bytearray(path.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())
    assert at > 0, "the weight's bytes are stored as they are"
    data[at + 5] ^= 0x04  # one bit of one float32 of the trained weights
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["state"]["finished"]["train"]["modules"]["net"]
                           ["weight"], weight), "torch.load itself does not notice"

    record, lines = _run(job, capsys)
    assert lines == [f"warning: checkpoint {path} fails its checksum (its contents changed after it was written); "
                     f"moved aside to {path.name}.invalid; the job starts over"]
    _assert_same_as_fresh(record, fresh)
    assert _aside(path).read_bytes() == bytes(data), "moved aside as it was, never deleted"


# --- case 4: a finished job's checkpoint that cannot be removed ------------------------------------
def test_case4_a_checkpoint_that_cannot_be_removed_is_one_warning_and_the_grid_goes_on(run_cli, kit_data,
                                                                                        monkeypatch):
    """The checkpoint folder became read-only after the checkpoints were written. Tests run as
    root, which ignores permission bits, so the removal is made to fail the way it does for a
    user: ``Path.unlink`` of a checkpoint raises PermissionError (EACCES) in the run's process."""
    real_unlink = Path.unlink

    def read_only_unlink(self, missing_ok=False):
        if self.name.endswith((".ckpt", ".ckpt.json")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only_unlink)
    result, results = run_cli("--method", "kit_trained", "--dataset", "kitgen", "--data-root", str(kit_data),
                              "--checkpoint-every", "1e-6")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    checkpoints = sorted((results / ".checkpoints").rglob("*.ckpt"))
    assert [p.name.split("__")[0] for p in checkpoints] == ["obj_b", "tex_a"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert sorted(warnings) == [f"warning: cannot remove checkpoint {p} (Permission denied); it is left in place"
                                for p in checkpoints]
    assert "2 job(s) ok, 0 failed" in result.stderr
    records = [p for p in (results / "kitgen").rglob("*.json")]
    assert sorted(p.name.split("__")[0] for p in records) == ["obj_b", "tex_a"], "no finished record lost"


# --- case 9: a checkpoint folder with almost no free space ---------------------------------------
def test_case9_too_little_space_is_said_in_mib(job, capsys, monkeypatch):
    """A tiny ``--checkpoint-dir`` (1.5 MiB free, as the job's process sees it: ``disk_usage`` of
    that folder is patched); the checkpoint needs about 1 MiB, twice that while replaced."""
    import shutil

    folder = Path(job.checkpoint_path).parent
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=3 * 2**19) if Path(p) == folder else real(p))
    record, lines = _run(job, capsys)
    reason = (f"1.5 MiB free in {folder}, a checkpoint needs about 1.0 MiB (twice that while it is replaced)")
    assert lines == [f"warning: no checkpoints for this job: {reason}; training goes on without them"]
    assert record["status"] == "ok" and record["steps_this_attempt"] == 9
    assert record["checkpoints"]["disabled"] == reason and record["checkpoints"]["written"] == 0
    assert not Path(job.checkpoint_path).exists()


# --- case 11: a job resumed under another thread count --------------------------------------------
class _Killed(BaseException):
    """Where ``kill -9`` would fall (nothing in a method catches a BaseException)."""


def test_case11_a_resumed_job_records_the_threads_of_every_attempt(job, capsys, monkeypatch):
    from adbench.training.session import Phase

    real_step_done = Phase.step_done

    def killed_after_step_4(self, loss, n=1):
        real_step_done(self, loss, n)
        if self.total_steps == 4:
            raise _Killed()

    monkeypatch.setattr(Phase, "step_done", killed_after_step_4)
    first, _ = _run(job, capsys)  # 1 thread (--jobs 2 on a 2-core machine)
    monkeypatch.undo()
    assert first["status"] == "failed" and read_header(Path(job.checkpoint_path)).torch_threads_attempts == [1]

    record, _ = _run(dataclasses.replace(job, threads=2), capsys)  # resumed with 2 threads (--jobs 1)
    assert record["status"] == "ok" and record["resumed_from"]["step"] == 1 and record["steps_this_attempt"] == 9 - 4
    assert record["torch_threads"] == 2
    assert record["torch_threads_attempts"] == [1, 2]
    assert read_header(Path(job.checkpoint_path)).torch_threads_attempts == [1, 2], "carried in the header"
