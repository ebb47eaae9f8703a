"""Run options are declared once (issue 22): ``adbench.options.RUN_OPTIONS`` makes the command
line, ``RunOptions`` and the in-job fields of ``Job``; a job is frozen; no function of
``adbench/`` is longer than 60 lines."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from adbench.cli import make_run_command, main
from adbench.jobs import Job, job_class
from adbench.options import DEFAULT_CHECKPOINT_EVERY, RUN_OPTIONS, Option, options_class
from adbench.run.runner import RunOptions

REPO = Path(__file__).resolve().parents[1]


def test_a_new_declaration_reaches_the_cli_run_options_and_job():
    extra = Option("frobnicate_level", ("--frobnicate-level",), type=int, default=3, in_job=True,
                   help="A test-only option: how hard to frobnicate.")
    options = (*RUN_OPTIONS, extra)
    help_text = CliRunner().invoke(make_run_command(options), ["--help"]).output
    assert "--frobnicate-level" in help_text and "how hard to frobnicate" in help_text
    assert options_class(options)().frobnicate_level == 3
    job_fields = {f.name: f for f in dataclasses.fields(job_class(options))}
    assert job_fields["frobnicate_level"].default == 3
    # and the shipped declarations have not got it
    assert "frobnicate_level" not in {f.name for f in dataclasses.fields(Job)}


def test_every_declaration_is_in_the_shipped_cli_run_options_and_job():
    help_text = CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output
    run_fields = {f.name for f in dataclasses.fields(RunOptions)}
    job_fields = {f.name for f in dataclasses.fields(Job)}
    for option in RUN_OPTIONS:
        assert option.flag in help_text, option.flag
        assert option.name in run_fields
        if option.in_job:
            assert option.name in job_fields, option.name
        assert getattr(RunOptions(), option.name) == (list(option.default) if option.multiple else option.default)


def test_job_is_frozen():
    job = Job(method="m", categories=["c"], seed=0, config={}, config_hash="h")
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 1  # type: ignore[misc]
    assert dataclasses.replace(job, threads=2).threads == 2


def test_the_checkpoint_default_is_written_once():
    """600 s: written in ``adbench.options`` only; the CLI, RunOptions, Job and the training
    layer's ``Checkpointing`` take it from there."""
    from adbench.training import Checkpointing

    literal = re.compile(r"\b600(\.0)?\b")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in sorted((REPO / "adbench").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if literal.search(line.split("#")[0]) and "checkpoint" in p.read_text().lower()
            and ("every" in line.lower() or "CHECKPOINT" in line)]
    assert hits == ["adbench/options.py:" + str(_line_of("DEFAULT_CHECKPOINT_EVERY = 600"))]
    assert DEFAULT_CHECKPOINT_EVERY == RunOptions().checkpoint_every == Checkpointing().every_seconds
    assert dataclasses.fields(Job)[[f.name for f in dataclasses.fields(Job)].index("checkpoint_every")].default \
        == DEFAULT_CHECKPOINT_EVERY


def _line_of(text: str) -> int:
    for n, line in enumerate((REPO / "adbench" / "options.py").read_text().splitlines(), 1):
        if line.startswith(text):
            return n
    raise AssertionError(text)


def test_no_function_in_adbench_is_longer_than_60_lines():
    long = []
    for path in sorted((REPO / "adbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []
