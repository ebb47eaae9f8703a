"""User-facing errors.

Anything the user can fix (a bad option, a missing or corrupt file, an unknown name) raises a
subclass of ``UserError``. The CLI prints its message (one line per problem, each naming the
file or option at fault) and exits with code 2, with no traceback unless ``--debug``.
Everything else is a bug or a job failure and is handled as such.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message names the file or option at fault."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems) if problems else [message]
        super().__init__(message if not problems else "\n".join(self.problems))


class ConfigError(UserError):
    """Unknown option, unknown config key, or a value of the wrong type."""


class DataError(UserError):
    """Missing data root, corrupt image, mask missing or of the wrong size, empty split...

    Index validation collects every problem before raising, so the user fixes them all at
    once: ``DataError("3 problems", problems=[...])`` prints one line per problem.
    """


class WeightsError(UserError):
    """A weights file that is missing, corrupt, or for another architecture."""


class RegistryError(UserError):
    """Unknown method or dataset name (with a close-match suggestion), or a bad plugin."""


class ResultsWriteError(UserError):
    """The results folder cannot be written (read-only, a file, disk full). Records already
    written are intact; the same command resumes once the cause is fixed."""


class DiskFull(UserError):
    """A job's work files (the spilled image cache, feature caches) do not fit the free space
    of ``--workdir``: the job fails with this one line instead of dying of SIGBUS later, when a
    memory-mapped page finds no block to land on."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received (``kill <pid>``, a cluster scheduler's pre-emption): handled like Ctrl-C
    (jobs in flight stopped, nothing finished lost) but reported with its own exit code, 143."""

    exit_code = 143


class FewShotError(UserError):
    """A method cannot fit on the K training images of the k-shot protocol (``--shots``): the
    job stops before fitting with this one line, the run goes on."""
