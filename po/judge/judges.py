"""The three judges behind one small interface, and their config-time checks.

Why: a sweep answers "which objective gave the better model" only when a judge compares the trained policy's
answers with the starting model's. A `Judge` either scores one response at a time (`score(prompts, responses)`,
higher is better: `function`, `reward_model`) or says how likely the first of two responses is the better
(`prefer(prompts, a, b)`: `pairwise`). `preferences` turns either into one preference per sample pair in [0, 1]
(1: the policy's response wins, 0.5: a tie), which po.judge.stats aggregates.

- `function`: a user callable `fn(prompts, responses) -> list[float]`; it runs the user's code, by design
  (docs/reliability.md).
- `reward_model`: a Hugging Face `*ForSequenceClassification` model; each (prompt, response) is formatted by the
  judge tokenizer's own chat template (plain `prompt\\nresponse` without one) and scored in batches (logit 0).
- `pairwise`: a causal LM shown `judge.question` with both responses; the preference is read from the log-probs
  of the two answer tokens, and each pair is judged in both orders and averaged, so position bias cancels (a judge
  that always answers "first" gives exactly 0.5).

`check_judge` runs in `po.run.validate` before anything loads: a bad judge config is one line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig

from po.config import resolve_target
from po.errors import ConfigError, POError
from po.judge.sampling import left_pad, pad_id
from po.models.policy import torch_dtype

KINDS = ("none", "function", "reward_model", "pairwise")
Scores = Callable[[list[str], list[str]], list[float]]


@dataclass
class Judge:
    """`score` (pointwise judges) or `prefer` (pairwise: P(first is better)); `name` for messages."""

    name: str
    score: Scores | None = None
    prefer: Callable[[list[str], list[str], list[str]], list[float]] | None = None

    @property
    def pointwise(self) -> bool:
        return self.score is not None


# --- config-time checks -----------------------------------------------------------------------------------------

def model_config_json(name_or_path: str, revision: str | None, key: str) -> dict[str, Any]:
    """The judge model's config.json (local folder or the Hugging Face cache), read without loading weights."""
    folder = Path(os.path.expanduser(name_or_path))
    path = folder / "config.json" if folder.is_dir() else None
    if path is None:
        try:
            from transformers.utils import cached_file

            found = cached_file(name_or_path, "config.json", revision=revision,
                                _raise_exceptions_for_missing_entries=False)
        except Exception:  # offline and not cached, unknown id, no access
            found = None
        path = Path(found) if found else None
    if path is None or not path.is_file():
        raise ConfigError(f"{key}={name_or_path}: no such local folder with a config.json, nor a model in the Hugging "
                          "Face cache; give a model folder or download the model first (huggingface-cli download ID)")
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}={name_or_path}: {path} is not readable JSON ({type(exc).__name__})") from exc
    return value if isinstance(value, dict) else {}


def resolve_function(path: Any, key: str = "judge.function") -> Scores:
    """The callable `judge.function` names (imported, not called)."""
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"{key}={path}: use a dotted path to a function, e.g. mypkg.scoring.score")
    fn = resolve_target(path, key)
    if not callable(fn) or isinstance(fn, type):
        raise ConfigError(f"{key}={path}: not a function; it must be called as fn(prompts, responses) and return one "
                          "float per response")
    return fn


def check_judge(judge_cfg: DictConfig, zero_stage: int) -> None:
    """Everything about the `judge` group that can be checked before a model loads."""
    kind = judge_cfg.get("kind", "none")
    if kind not in KINDS:
        raise ConfigError(f"judge.kind={kind}: use one of {', '.join(KINDS)} (e.g. judge=function)")
    if kind == "none":
        return
    if zero_stage == 3:
        raise ConfigError(f"judge={kind} is not supported under deepspeed=zero3 (sampling from a sharded policy would "
                          "gather it layer by layer on every token); use deepspeed=zero2, or judge=none")
    if kind == "function":
        resolve_function(judge_cfg.function)
        return
    config = model_config_json(str(judge_cfg.name_or_path), judge_cfg.get("revision"), "judge.name_or_path")
    archs = [str(a) for a in config.get("architectures") or []]
    if kind == "reward_model" and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ConfigError(f"judge.name_or_path={judge_cfg.name_or_path}: judge=reward_model needs a sequence-"
                          f"classification reward model, but its config.json lists {archs or 'no architectures'}; "
                          "use a *ForSequenceClassification model, or judge=pairwise for a causal LM")
    if kind == "pairwise":
        if not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
            raise ConfigError(f"judge.name_or_path={judge_cfg.name_or_path}: judge=pairwise needs a causal LM, but "
                              f"its config.json lists {archs or 'no architectures'}; use a *ForCausalLM model")
        try:
            str(judge_cfg.question).format(prompt="p", a="a", b="b")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"judge.question: a template with the fields {{prompt}}, {{a}} and {{b}} only "
                              f"(double other braces); {type(exc).__name__}: {exc}") from exc
        answers = list(judge_cfg.answers)
        if len(answers) != 2 or answers[0] == answers[1] or not all(isinstance(a, str) for a in answers):
            raise ConfigError(f"judge.answers={answers}: two different strings, for the first and the second response")


# --- judges -----------------------------------------------------------------------------------------------------

def function_judge(fn: Scores, name: str = "judge.function") -> Judge:
    """A user callable; its output is checked (one finite float per response) so a bad scorer is one line."""
    def score(prompts: list[str], responses: list[str]) -> list[float]:
        out = fn(list(prompts), list(responses))
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError) as exc:
            raise POError(f"{name} returned {type(out).__name__}, not a list of numbers (one per response)") from exc
        if len(values) != len(responses):
            raise POError(f"{name} returned {len(values)} scores for {len(responses)} responses; return one per "
                          "response")
        if not all(math.isfinite(v) for v in values):
            raise POError(f"{name} returned a non-finite score ({next(v for v in values if not math.isfinite(v))}); "
                          "return finite numbers")
        return values

    return Judge(name, score=score)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def reward_model_judge(model, tokenizer, batch_size: int = 16, max_length: int = 1024,
                       name: str = "reward_model") -> Judge:
    """Scores (prompt, response) with a sequence-classification model through its tokenizer's chat template."""
    model.eval()
    pad = pad_id(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad  # the classifier reads the last non-pad token

    def text(prompt: str, response: str) -> str:
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": response}], tokenize=False)
        return f"{prompt}\n{response}"

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(responses), batch_size):
            rows = [tokenizer(text(p, r), add_special_tokens=not tokenizer.chat_template).input_ids[-max_length:]
                    for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
            ids, attn = left_pad(rows, pad)
            logits = model(input_ids=ids.to(_device(model)), attention_mask=attn.to(_device(model))).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    return Judge(name, score=score)


def answer_tokens(tokenizer, answers: Sequence[str]) -> tuple[list[int], int, int]:
    """(tokens both answers share before their last one, last token of answer A, of answer B). When the tokenizer
    merges the leading space into one answer only (" A" one token, " B" two), the space is spelled on its own."""
    def spell(lead: str, a: str, b: str):
        head = tokenizer(lead, add_special_tokens=False).input_ids if lead else []
        ta, tb = (head + tokenizer(x, add_special_tokens=False).input_ids for x in (a, b))
        ok = ta and tb and ta[:-1] == tb[:-1] and ta[-1] != tb[-1]
        return (ta[:-1], ta[-1], tb[-1]) if ok else None

    a, b = answers
    lead = a[: len(a) - len(a.lstrip())]
    found = spell("", a, b) or (spell(lead, a[len(lead):], b[len(lead):]) if lead and b.startswith(lead) else None)
    if found is None:
        raise POError(f"judge.answers={list(answers)}: the judge tokenizer must spell both with the same tokens except "
                      "a different last one (e.g. [' A', ' B'])")
    return found


def pairwise_judge(model, tokenizer, question: str, answers: Sequence[str] = (" A", " B"), batch_size: int = 16,
                   max_length: int = 2048, name: str = "pairwise") -> Judge:
    """P(first response better) from the answer tokens' log-probs, averaged over both orders."""
    model.eval()
    prefix, tok_a, tok_b = answer_tokens(tokenizer, answers)
    pad = pad_id(tokenizer)

    @torch.no_grad()
    def first_wins(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(prompts), batch_size):
            rows = [(tokenizer(question.format(prompt=p, a=x, b=y)).input_ids + prefix)[-max_length:]
                    for p, x, y in zip(prompts[start:start + batch_size], a[start:start + batch_size],
                                       b[start:start + batch_size])]
            ids, attn = left_pad(rows, pad)
            logits = model(input_ids=ids.to(_device(model)), attention_mask=attn.to(_device(model))).logits[:, -1]
            logps = torch.log_softmax(logits.float(), dim=-1)
            out.extend(torch.sigmoid(logps[:, tok_a] - logps[:, tok_b]).cpu().tolist())
        return out

    def prefer(prompts: list[str], a: list[str], b: list[str]) -> list[float]:
        ab = first_wins(prompts, a, b)
        ba = first_wins(prompts, b, a)
        return [(x + (1.0 - y)) / 2 for x, y in zip(ab, ba)]

    return Judge(name, prefer=prefer)


def load_judge(judge_cfg: DictConfig, device: torch.device | str) -> Judge:
    """The judge the `judge` group names, its model (if any) loaded on `device`."""
    kind = judge_cfg.kind
    if kind == "function":
        return function_judge(resolve_function(judge_cfg.function), f"judge.function={judge_cfg.function}")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kwargs = {"revision": judge_cfg.get("revision"), "dtype": torch_dtype(judge_cfg.get("dtype", "auto"))}
    try:
        tokenizer = AutoTokenizer.from_pretrained(judge_cfg.name_or_path, revision=judge_cfg.get("revision"))
        cls = AutoModelForSequenceClassification if kind == "reward_model" else AutoModelForCausalLM
        model = cls.from_pretrained(judge_cfg.name_or_path, **kwargs).to(device).requires_grad_(False)
    except (OSError, ValueError) as exc:
        raise POError(f"judge.name_or_path={judge_cfg.name_or_path}: cannot load it ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if kind == "reward_model":
        return reward_model_judge(model, tokenizer, judge_cfg.batch_size, judge_cfg.max_length,
                                  f"reward_model {judge_cfg.name_or_path}")
    return pairwise_judge(model, tokenizer, judge_cfg.question, list(judge_cfg.answers), judge_cfg.batch_size,
                          judge_cfg.max_length, f"pairwise {judge_cfg.name_or_path}")


def preferences(judge: Judge, prompts: list[str], policy: list[str], start: list[str],
                start_scores: list[float] | None = None) -> tuple[list[float], list[float], list[float] | None]:
    """(preference for the policy's response per pair in [0, 1], the policy's scores, the starting model's scores).

    Pointwise: 1 if the policy's score is higher, 0.5 on a tie, else 0 (`start_scores` reused when given: the
    cache). Pairwise: P(policy better), both orders averaged; its "scores" are that preference (no start scores)."""
    if judge.pointwise:
        mine = judge.score(prompts, policy)
        theirs = start_scores if start_scores is not None else judge.score(prompts, start)
        prefs = [1.0 if m > t else 0.5 if m == t else 0.0 for m, t in zip(mine, theirs)]
        return prefs, mine, list(theirs)
    prefs = judge.prefer(prompts, policy, start)
    return prefs, prefs, None
