"""The po-* commands' error exit: one line on stderr, written in one piece.

Why one piece: every rank of a multi-process job that refuses the same start prints the same error, and under
torchrun (PYTHONUNBUFFERED=1) `print` writes the message and its newline separately, so two ranks' lines were
spliced into one ("...hydra.run.dirpo-train: error: ..."; tests/faults/test_fault_lock.py saw it)."""

import io
import sys

import pytest

from po.cli.common import errors_as_one_line, print_line
from po.errors import ConfigError


class Writes(io.StringIO):
    """A stream that records each write call."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def write(self, text):
        self.calls.append(text)
        return super().write(text)


def test_an_error_is_one_line_in_one_write_and_exit_status_2(monkeypatch):
    stream = Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    with pytest.raises(SystemExit) as stop, errors_as_one_line("po-x"):
        raise ConfigError("data.max_length=1: use an integer >= 2")
    assert stop.value.code == 2
    assert stream.calls == ["po-x: error: data.max_length=1: use an integer >= 2\n"]


def test_print_line_is_one_write(monkeypatch):
    stream = Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    print_line("po-train: preempted: checkpoint-3")
    assert stream.calls == ["po-train: preempted: checkpoint-3\n"]
