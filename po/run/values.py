"""Strict values: every key of po's config groups is checked for type and range before anything loads.

Why: Hydra hands `trainer.overwrite=no` over as the string "no", and Python's truthiness read it as true (the
previous run was deleted); `loss.beta=inf` gave NaN steps; `trainer.learning_rate=abc` was a traceback after the
model had loaded. Here each such value is one `ConfigError` naming the key, the value and what to use.

A key's type comes from the first of:
1. `rules()` below: keys whose range matters, or whose shipped default is null;
2. `trainer.*`: the field types of `transformers.TrainingArguments` (an enum field takes its names);
3. `loss.*` and `weighting.*`: the constructor annotations of the class `_target_` names (read, never called);
4. any other key: the type of its shipped default in conf/, over every option of its group (bool, int, float,
   list or dict; strings and nulls there give no type, since they are often placeholders such as "auto").

Also here: `check_training_arguments` (TrainingArguments' own checks, run without setting up any device or process
group) and `check_trains` (a run that would train 0 steps), the one check that needs the loaded data.
"""

from __future__ import annotations

import functools
import os
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from po.errors import ConfigError
from po.judge.judges import KINDS as JUDGE_KINDS
from po.models.peft import COMPUTE_DTYPES, METHODS
from po.models.policy import DTYPES
from po.value_specs import (Spec, boolean, check_arguments, check_value, choice, container, either, integer, kind_of,
                            nullable_spec, number, show, spec_of_annotation, text)

GROUPS = ("model", "data", "loss", "weighting", "reference", "peft", "deepspeed", "trainer", "eval", "judge")


POSITIVE_INT = integer(gt=0)
OPTIONAL_TEXT = text(nullable=True)


@functools.cache
def rules() -> dict[str, Spec]:
    """po's declared keys: ranges that matter and types whose shipped default is null. README lists them."""
    return {
        "seed": integer(ge=0, le=2**32 - 1),
        "data.path": OPTIONAL_TEXT, "data.name": OPTIONAL_TEXT, "data.split": text(), "data.format": text(),
        "data.eval_path": OPTIONAL_TEXT, "data.eval_split": OPTIONAL_TEXT, "data.cache_dir": OPTIONAL_TEXT,
        "data.max_rows": integer(gt=0, nullable=True),
        "data.max_length": integer(ge=2),
        "data.max_prompt_length": integer(gt=0, nullable=True),
        "data.eval_fraction": number(ge=0, lt=1),
        "data.num_proc": integer(gt=0, nullable=True),
        "data.min_score_margin": number(nullable=True),
        "data.show_examples": integer(ge=0),
        "data.mixture": container("list", "a list of {path, weight, ...} sources", nullable=True),
        "data.columns": container("dict", "a mapping {prompt: NAME, chosen: NAME, ...}"),
        "data.extra_columns": container("dict", "a mapping {annotator: NAME, weight: NAME, margin: NAME, "
                                                "confidence: NAME}"),
        "data.list_pairs": choice("all", "best"),
        "data.ultrafeedback_score": choice("overall_score", "fine-grained_score", "helpfulness", "honesty",
                                           "instruction_following", "truthfulness"),
        "data.strength_as": choice("weight", "margin", nullable=True),
        "model.kind": choice("tiny", "hf"),
        "model.name_or_path": text(), "model.architecture": text(),
        "model.tokenizer_name_or_path": OPTIONAL_TEXT, "model.revision": OPTIONAL_TEXT,
        "model.attn_implementation": OPTIONAL_TEXT,
        "model.warmup.steps": integer(ge=0), "model.warmup.learning_rate": number(gt=0),
        "model.warmup.batch_size": POSITIVE_INT, "model.warmup.dir": OPTIONAL_TEXT,
        "model.warmup.answers": choice("both", "chosen", "rejected"),
        "model.dtype": choice("auto", *DTYPES),
        "peft.method": choice(*METHODS),
        "peft.r": POSITIVE_INT,
        "peft.alpha": number(gt=0),
        "peft.dropout": number(ge=0, lt=1),
        "peft.target_modules": either([container("list", "a list of module names"), text(what="all-linear")],
                                      nullable=False),
        "peft.bias": choice("none", "all", "lora_only"),
        "peft.modules_to_save": container("list", "a list of module names", nullable=True),
        "peft.quant_type": choice("nf4", "fp4"),
        "peft.compute_dtype": choice(*COMPUTE_DTYPES),
        "reference.strategy": choice("auto", "model", "adapter", "cached", "none"),
        "reference.dir": OPTIONAL_TEXT,
        "deepspeed.config": container("dict", "a DeepSpeed config mapping", nullable=True),
        "trainer.per_device_train_batch_size": POSITIVE_INT,
        "trainer.per_device_eval_batch_size": POSITIVE_INT,
        "trainer.gradient_accumulation_steps": integer(ge=1),
        "trainer.max_steps": Spec(frozenset({"int"}), "-1 (train trainer.num_train_epochs) or an integer > 0",
                                  lambda v: v == -1 or v > 0),
        "trainer.num_train_epochs": number(gt=0),
        "trainer.learning_rate": number(gt=0),
        "trainer.warmup_steps": number(ge=0),
        "trainer.weight_decay": number(ge=0),
        "trainer.max_grad_norm": number(ge=0),
        "trainer.logging_steps": number(gt=0),
        "trainer.save_steps": number(gt=0, nullable=True),
        "trainer.eval_steps": number(gt=0, nullable=True),
        "trainer.save_total_limit": integer(gt=0, nullable=True),
        "trainer.dataloader_num_workers": integer(ge=0),
        "trainer.save_strategy": choice("auto", *(s.value for s in SaveStrategy)),
        "trainer.eval_strategy": choice("auto", *(s.value for s in IntervalStrategy)),
        "trainer.logps_chunk_size": POSITIVE_INT,
        "trainer.max_bad_steps": integer(ge=1),
        "trainer.resume": text(what="auto, never or a checkpoint folder"),
        "eval.num_prompts": POSITIVE_INT,
        "eval.max_new_tokens": POSITIVE_INT,
        "eval.temperature": number(gt=0),
        "judge.kind": choice(*JUDGE_KINDS),
        "judge.function": text(), "judge.name_or_path": text(), "judge.revision": OPTIONAL_TEXT,
        "judge.dtype": choice("auto", *DTYPES), "judge.dir": OPTIONAL_TEXT, "judge.question": text(),
        "judge.max_length": POSITIVE_INT, "judge.num_prompts": POSITIVE_INT, "judge.samples_per_prompt": POSITIVE_INT,
        "judge.max_new_tokens": POSITIVE_INT, "judge.temperature": number(gt=0),
        "judge.top_p": Spec(frozenset({"number"}), "a number in (0, 1]", lambda v: 0 < v <= 1),
        "judge.batch_size": POSITIVE_INT, "judge.bootstrap_samples": integer(ge=100),
    }


# Types from annotations (TrainingArguments fields) --------------------------------------------------------------

@functools.cache
def training_argument_specs() -> dict[str, Spec]:
    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: s for f in fields(TrainingArguments) if (s := spec_of_annotation(hints[f.name])) is not None}


# Types from the shipped defaults ----------------------------------------------------------------------------------

def _walk(node: Any, prefix: str):
    """(dotted key, value) for every entry of nested dicts (lists are values, not walked)."""
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, value
        if isinstance(value, dict):
            yield from _walk(value, path)


@functools.cache
def shipped_specs(conf: Path) -> dict[str, Spec]:
    """Key -> spec from the type of its default in every option of its group (hydra's own groups excluded)."""
    kinds: dict[str, set[str]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if len(rel.parts) < 2 or rel.parts[0] == "hydra":
            continue
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        node.pop("defaults", None)
        for key, value in _walk(node, rel.parts[0]):
            kinds.setdefault(key, set()).add(kind_of(value))
    return {key: spec for key, found in kinds.items() if (spec := _spec_of_defaults(found)) is not None}


def _spec_of_defaults(found: set[str]) -> Spec | None:
    nullable, found = "null" in found, found - {"null"}
    if found == {"bool"}:
        return nullable_spec(boolean(), nullable)
    if found == {"int"}:
        return nullable_spec(integer(), nullable)
    if found and found <= {"int", "float"}:
        return nullable_spec(number(), nullable)
    if found == {"dict"}:
        return container("dict", "a mapping", nullable)
    if found == {"list"}:
        return container("list", "a list", nullable)
    return None  # strings (placeholders such as "auto" or "???"), mixed kinds, or only nulls: no type


# The checks -----------------------------------------------------------------------------------------------------

def check_values(cfg: DictConfig, conf: Path, classes: dict[str, type]) -> None:
    """Check every key of po's groups (and `seed`) against its spec; `classes` are the loss/weighting targets."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "a value"
        raise ConfigError(f"{key}: cannot resolve its interpolation ({str(exc).splitlines()[0]})") from exc
    check_value("seed", values.get("seed"), rules()["seed"])
    shipped = shipped_specs(conf)
    for group in GROUPS:
        node = values.get(group)
        if not isinstance(node, dict):
            continue
        if group in classes:
            check_arguments(group, {k: v for k, v in node.items() if k != "_target_"}, classes[group])
            continue
        for key, value in _walk(node, group):
            spec = spec_for(key, shipped)
            if spec is not None:
                check_value(key, value, spec)
        if group == "data" and isinstance(node.get("mixture"), list):
            _check_mixture(node["mixture"], shipped)


def spec_for(key: str, shipped: dict[str, Spec]) -> Spec | None:
    group, _, name = key.partition(".")
    if key in rules():
        return rules()[key]
    if group == "trainer" and name in training_argument_specs():
        return training_argument_specs()[name]
    spec = shipped.get(key)
    if spec is not None and key.startswith("model.config.") and spec.kinds == {"int"}:
        return POSITIVE_INT  # sizes and counts of the tiny model
    return spec


def _check_mixture(entries: list, shipped: dict[str, Spec]) -> None:
    """The keys a mixture entry shares with the data group (max_rows, eval_fraction, ...); po.data.options checks
    the entry's shape and weight."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        for name, value in entry.items():
            spec = spec_for(f"data.{name}", shipped)
            if spec is not None:
                check_value(f"data.mixture[{i}].{name}", value, spec)


class _ArgumentsCheck(TrainingArguments):
    """TrainingArguments whose construction runs every value check but sets up no device: no accelerate state,
    no torch.distributed process group, no DeepSpeed. The run builds the real one later (po.run.job)."""

    @property
    def device(self):  # read once by __post_init__, only to trigger the device setup this class skips
        return None


def check_training_arguments(kwargs: dict[str, Any]) -> None:
    """Run transformers' own checks of the trainer group; an error becomes one line naming the `trainer.` key."""
    kwargs = {k: v for k, v in kwargs.items() if k != "deepspeed"}
    kwargs.setdefault("output_dir", "checkpoints")  # never created here
    use_deepspeed = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)  # else __post_init__ builds a DeepSpeed plugin
    try:
        _ArgumentsCheck(**kwargs)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ConfigError(_training_arguments_message(exc, kwargs)) from exc
    finally:
        if use_deepspeed is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = use_deepspeed


def _training_arguments_message(exc: Exception, kwargs: dict[str, Any]) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message)
    names = {f.name for f in fields(TrainingArguments)}
    key = next((w for w in words if w in kwargs), None) or next((w for w in words if w in names), None)
    if key is None:
        return f"trainer (transformers.TrainingArguments): {message}"
    value = f"={show(kwargs[key])}" if key in kwargs else ""
    return f"trainer.{key}{value}: {message} (transformers.TrainingArguments)"


def check_trains(trainer: DictConfig, train_pairs: int, world_size: int) -> None:
    """Refuse a run that would train 0 optimizer steps; called after the data loads, before any model loads."""
    if train_pairs == 0:
        raise ConfigError("no training pairs: the run would train 0 steps; check data.path and the data report above")
    micro = trainer.per_device_train_batch_size
    accumulation = trainer.gradient_accumulation_steps
    global_batch = micro * accumulation * world_size
    if trainer.get("dataloader_drop_last", False) and train_pairs < global_batch:
        processes = f"{world_size} process" + ("es" if world_size != 1 else "")
        raise ConfigError(
            f"{train_pairs} training pairs are fewer than one global batch of {global_batch} "
            f"(trainer.per_device_train_batch_size={micro} x trainer.gradient_accumulation_steps={accumulation} x "
            f"{processes}), and trainer.dataloader_drop_last=true drops an incomplete batch, so the run would train "
            "0 steps: use more data, a smaller batch or accumulation, or trainer.dataloader_drop_last=false")
