"""Rule-based judges for the shipped toy set (po/data/toy.py), for studies and tests: `judge=function
judge.function=po.judge.toy.score`.

`score` knows what makes a toy chosen answer better: it is on topic (names the subject the prompt asks about) and
helpful (the words of the helpful answers), never curt. `length` scores a response by its length alone: the toy
set's chosen answer is longer in most pairs, so it shows what length control removes. `tokens` is the same judge in
the unit the length-controlled win rate regresses on (the tiny model's tokens, po/judge/stats.py): a length judge in
characters keeps a residual preference at equal token length, since clean words take fewer tokens per character
than the byte-level pieces a tiny model also writes.
"""

from __future__ import annotations

import re
from functools import lru_cache

from po.data.toy import CURT, GOOD_BODIES, GOOD_CLOSINGS, GOOD_OPENINGS, SUBJECTS
from po.models.tokenizer import load_tiny_tokenizer

_WORDS = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


HELPFUL = frozenset(w for t in GOOD_OPENINGS + GOOD_BODIES + GOOD_CLOSINGS for w in _words(t)) - {"s"}
CURT_WORDS = frozenset(w for t in CURT for w in _words(t)) - HELPFUL


def _subject(prompt: str) -> str | None:
    words = set(_words(prompt))
    return next((s for s in SUBJECTS if s in words), None)


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """+2 if the response names the prompt's subject, -1 for another subject, +1 per distinct helpful word (at most
    8), -1 per curt word."""
    out = []
    for prompt, response in zip(prompts, responses):
        words = _words(response)
        subject = _subject(prompt)
        value = min(len(set(words) & HELPFUL), 8) - sum(w in CURT_WORDS for w in words)
        if subject is not None and subject in words:
            value += 2
        elif any(s in words for s in SUBJECTS):
            value -= 1
        out.append(float(value))
    return out


def length(prompts: list[str], responses: list[str]) -> list[float]:
    """The response's length in characters (a judge that prefers length alone)."""
    return [float(len(r)) for r in responses]


@lru_cache(maxsize=1)
def _tiny_tokenizer():
    return load_tiny_tokenizer()


def tokens(prompts: list[str], responses: list[str]) -> list[float]:
    """The response's length in the shipped tiny tokenizer's tokens (a judge that prefers length alone, in the
    default job's token unit)."""
    return [float(len(ids)) for ids in _tiny_tokenizer()(list(responses), add_special_tokens=False).input_ids]
