"""What the `po-*` commands share: one error line instead of a traceback; a cache command's inputs and its report
line."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig
from transformers import set_seed

from po.data.load import PreferenceData
from po.errors import POError
from po.models.tokenizer import load_tokenizer
from po.run.build import load_data


def print_line(text: str) -> None:
    """`text` and its newline on stderr in one write. Every rank of a job that fails the same way prints the same
    line, and under torchrun (PYTHONUNBUFFERED=1) `print` writes the text and the newline separately, so two ranks'
    lines were spliced into one."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def errors_as_one_line(command: str) -> Iterator[None]:
    """A `POError` inside becomes `<command>: error: <message>` on stderr (one line, one write) and exit status 2."""
    try:
        yield
    except POError as exc:
        print_line(f"{command}: error: {exc}")
        sys.exit(2)


def fill_and_report(command: str, fill: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig,
                    what: Callable[[dict[str, Any]], str]) -> None:
    """A cache command's body: `fill(cfg)` (errors as one line), then `<command>: <what> already cached|written: PATH`
    from the facts it returns (`hit`, `path`)."""
    with errors_as_one_line(command):
        facts = fill(cfg)
    state = "already cached" if facts["hit"] else "written"
    print(f"{command}: {what(facts)} {state}: {facts['path']}")


def seeded_inputs(cfg: DictConfig) -> tuple[Any, PreferenceData, str]:
    """Seeded as po-train is: the tokenizer, the tokenized data (the shared cache) and the device a cache command
    (po-cache-ref, po-cache-judge) computes on."""
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    data = load_data(cfg, tokenizer)
    device = "cuda" if torch.cuda.is_available() and not cfg.trainer.get("use_cpu") else "cpu"
    return tokenizer, data, device
