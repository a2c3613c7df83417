"""Strict values, `_target_` kinds and defaults that do not trap, checked in-process through `validate(cfg)`.

The subprocess table through the real CLI is tests/faults/test_fault_values.py; here the mechanisms are covered
key by key: every boolean of every group option, every boolean TrainingArguments field, every boolean loss
parameter, and a table of integers, floats and names with their ranges.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import types
import typing

import pytest
import torch
from omegaconf import OmegaConf
from transformers import TrainingArguments
from transformers.trainer_utils import SaveStrategy

from losses.base import LossOutput, PairBatch, PreferenceLoss, check_in_range, check_positive, common_metrics
from po.config import build_loss, resolve_target, trainer_kwargs
from po.errors import ConfigError
from po.run.validate import validate
from tests.helpers.config import NEEDS, OPTIONS
from tests.helpers.runs import REPO, compose_cfg


def bool_leaves(node, prefix: str):
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if OmegaConf.is_dict(value):
            yield from bool_leaves(value, path)
        elif isinstance(value, bool):
            yield path


def boolean_cases():
    """(overrides selecting the option, key) for every boolean key of every option of every po group."""
    seen = {}
    for group, option in OPTIONS:
        if group.startswith("hydra"):
            continue
        overrides = [f"{group}={option}"] + NEEDS.get((group, option), [])
        cfg = compose_cfg(overrides)
        for key in bool_leaves(cfg[group], group):
            seen.setdefault(key, overrides)
    return sorted((key, overrides) for key, overrides in seen.items())


BOOLEAN_CASES = boolean_cases()


def test_the_boolean_table_covers_every_group():
    keys = {key for key, _ in BOOLEAN_CASES}
    assert {"trainer.overwrite", "trainer.packing", "trainer.checkpoint_checksums", "trainer.bf16",
            "trainer.dataloader_drop_last", "data.strict", "data.cache", "eval.before_training", "eval.generate",
            "model.gradient_checkpointing", "model.trust_remote_code", "model.merge_lora_on_save",
            "peft.double_quant", "loss.shared_mask", "loss.length_normalize",
            "deepspeed.config.zero_optimization.overlap_comm"} <= keys
    assert len(keys) >= 25


@pytest.mark.parametrize("key,overrides", BOOLEAN_CASES, ids=[k for k, _ in BOOLEAN_CASES])
def test_every_boolean_key_takes_only_true_or_false(key, overrides):
    for bad in ("no", "1", "off"):
        with pytest.raises(ConfigError) as exc:
            validate(compose_cfg(overrides + [f"{key}={bad}"]))
        assert f"{key}={bad}" in str(exc.value) and "true or false" in str(exc.value)


def _is_bool_type(tp) -> bool:
    """`bool` or `bool | None` (not `str | bool`, where "no" is a valid string)."""
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                          and set(typing.get_args(tp)) == {bool, type(None)})


TA_BOOLS = sorted(f.name for f in dataclasses.fields(TrainingArguments)
                  if _is_bool_type(typing.get_type_hints(TrainingArguments)[f.name]))


def test_training_argument_booleans_are_found():
    assert {"bf16", "fp16", "use_cpu", "dataloader_drop_last", "load_best_model_at_end", "push_to_hub"} <= set(TA_BOOLS)


@pytest.mark.parametrize("field", TA_BOOLS)
def test_every_training_argument_boolean_is_strict(field):
    with pytest.raises(ConfigError, match=rf"trainer\.{field}=no: .*true or false"):
        validate(compose_cfg([f"++trainer.{field}=no"]))


LOSS_BOOLS = []
for _group, _option in OPTIONS:
    if _group == "loss":
        _cls = resolve_target(compose_cfg([f"loss={_option}"]).loss._target_)
        for _name, _tp in typing.get_type_hints(_cls.__init__).items():
            if _tp is bool:
                LOSS_BOOLS.append((_option, _name))


def test_loss_booleans_are_found():
    assert ("ipo", "length_normalize") in LOSS_BOOLS and ("sparsepo", "shared_mask") in LOSS_BOOLS


@pytest.mark.parametrize("option,name", LOSS_BOOLS)
def test_every_loss_boolean_is_strict(option, name):
    """These constructors take `bool(value)`, so only the check before the call can refuse "no"."""
    with pytest.raises(ConfigError, match=rf"loss\.{name}=no: .*true or false"):
        validate(compose_cfg([f"loss={option}", f"++loss.{name}=no"]))


BAD = [  # overrides, the key=value the one-line error must name
    (["data.max_rows=0"], "data.max_rows=0"),
    (["data.max_rows=abc"], "data.max_rows=abc"),
    (["data.max_length=abc"], "data.max_length=abc"),
    (["data.max_length=64.5"], "data.max_length=64.5"),
    (["data.max_prompt_length=0"], "data.max_prompt_length=0"),
    (["data.eval_fraction=abc"], "data.eval_fraction=abc"),
    (["data.num_proc=0"], "data.num_proc=0"),
    (["data.min_score_margin=abc"], "data.min_score_margin=abc"),
    (["data.min_score_margin=nan"], "data.min_score_margin=nan"),
    (["data.show_examples=-1"], "data.show_examples=-1"),
    (["data=mixture", "data.mixture=[{path: a.jsonl, max_rows: 0}]"], "data.mixture[0].max_rows=0"),
    (["data=mixture", "data.mixture=[{path: a.jsonl, weight: abc}]"], "data.mixture[0].weight=abc"),
    (["data=mixture", "data.mixture=[{path: a.jsonl, weight: inf}]"], "data.mixture[0].weight=inf"),
    (["data=mixture", "data.mixture=[{path: a.jsonl, weight: true}]"], "data.mixture[0].weight=True"),
    (["trainer.per_device_train_batch_size=0"], "trainer.per_device_train_batch_size=0"),
    (["trainer.per_device_eval_batch_size=-1"], "trainer.per_device_eval_batch_size=-1"),
    (["trainer.per_device_train_batch_size=8.0"], "trainer.per_device_train_batch_size=8.0"),
    (["trainer.gradient_accumulation_steps=0"], "trainer.gradient_accumulation_steps=0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.max_steps=-2"], "trainer.max_steps=-2"),
    (["trainer.max_steps=true"], "trainer.max_steps=true"),
    (["trainer.num_train_epochs=0"], "trainer.num_train_epochs=0"),
    (["trainer.logging_steps=0"], "trainer.logging_steps=0"),
    (["trainer.save_steps=-1"], "trainer.save_steps=-1"),
    (["trainer.eval_steps=0"], "trainer.eval_steps=0"),
    (["trainer.save_total_limit=0"], "trainer.save_total_limit=0"),
    (["trainer.learning_rate=0"], "trainer.learning_rate=0"),
    (["trainer.learning_rate=-1e-5"], "trainer.learning_rate=-1e-05"),
    (["trainer.learning_rate=inf"], "trainer.learning_rate=inf"),
    (["trainer.learning_rate=nan"], "trainer.learning_rate=nan"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps=-1"),
    (["model.warmup.answers=best"], "model.warmup.answers=best"),
    (["trainer.weight_decay=-0.1"], "trainer.weight_decay=-0.1"),
    (["trainer.max_grad_norm=nan"], "trainer.max_grad_norm=nan"),
    (["trainer.max_grad_norm=abc"], "trainer.max_grad_norm=abc"),
    (["trainer.dataloader_num_workers=-1"], "trainer.dataloader_num_workers=-1"),
    (["trainer.logps_chunk_size=0"], "trainer.logps_chunk_size=0"),
    (["trainer.max_bad_steps=0"], "trainer.max_bad_steps=0"),
    (["trainer.resume=3"], "trainer.resume=3"),
    (["trainer.optim=adamw_bogus"], "trainer.optim=adamw_bogus"),
    (["trainer.lr_scheduler_type=bogus"], "trainer.lr_scheduler_type=bogus"),
    (["trainer.save_strategy=sometimes"], "trainer.save_strategy=sometimes"),
    (["trainer.eval_strategy=sometimes"], "trainer.eval_strategy=sometimes"),
    (["seed=-1"], "seed=-1"),
    (["seed=1.5"], "seed=1.5"),
    (["seed=abc"], "seed=abc"),
    (["eval.num_prompts=0"], "eval.num_prompts=0"),
    (["eval.max_new_tokens=0"], "eval.max_new_tokens=0"),
    (["eval.temperature=0"], "eval.temperature=0"),
    (["eval.temperature=inf"], "eval.temperature=inf"),
    (["loss.beta=abc"], "loss.beta=abc"),
    (["loss.beta=inf"], "loss.beta=inf"),
    (["loss.beta=nan"], "loss.beta=nan"),
    (["loss.beta=true"], "loss.beta=true"),
    (["loss.label_smoothing=abc"], "loss.label_smoothing=abc"),
    (["loss=simpo", "loss.gamma_beta_ratio=inf"], "loss.gamma_beta_ratio=inf"),
    (["loss=sparsepo", "loss.lambda_u=abc"], "loss.lambda_u=abc"),
    (["loss=sparsepo", "loss.mask_dropout=nan"], "loss.mask_dropout=nan"),
    (["weighting=lcpo", "weighting.eta_init=abc"], "weighting.eta_init=abc"),
    (["weighting=lcpo", "weighting.alpha=nan"], "weighting.alpha=nan"),
    (["weighting=lcpo", "+weighting.num_annotators=1.5"], "weighting.num_annotators=1.5"),
    (["model.dtype=float8"], "model.dtype=float8"),
    (["model.kind=giant"], "model.kind=giant"),
    (["model.config.hidden_size=abc"], "model.config.hidden_size=abc"),
    (["model.config.num_hidden_layers=0"], "model.config.num_hidden_layers=0"),
    (["peft=lora", "peft.r=0"], "peft.r=0"),
    (["peft=lora", "peft.alpha=abc"], "peft.alpha=abc"),
    (["peft=lora", "peft.dropout=1.5"], "peft.dropout=1.5"),
    (["peft=lora", "peft.bias=some"], "peft.bias=some"),
    (["peft=lora", "peft.target_modules=3"], "peft.target_modules=3"),
    (["deepspeed=zero2", "deepspeed.config.zero_optimization.stage=two"], "deepspeed.config.zero_optimization.stage=two"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_one_line_naming_key_and_value(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(overrides))
    message = str(exc.value)
    assert needle in message, message
    assert "\n" not in message


def test_a_loss_hyperparameter_that_is_not_a_parameter_is_named():
    with pytest.raises(ConfigError, match=r"loss\.gamma .*not a parameter of losses\.dpo\.DPOLoss.*beta"):
        validate(compose_cfg(["+loss.gamma=0.5"]))


GOOD = [
    ["trainer.learning_rate=5e-7"],
    ["loss.beta=1"],                                   # an integer where a float is expected
    ["trainer.warmup_steps=0.1"],                      # a ratio (transformers: < 1 is a fraction of the steps)
    ["trainer.max_steps=-1", "trainer.num_train_epochs=2"],
    ["trainer.save_strategy=steps", "trainer.save_steps=3"],
    ["trainer.eval_strategy=steps", "trainer.eval_steps=5"],
    ["trainer.save_steps=0.25"],
    ["trainer.bf16=false", "trainer.packing=true", "trainer.overwrite=false"],
    ["trainer.max_grad_norm=0"],
    ["trainer.lr_scheduler_type=cosine", "trainer.optim=sgd"],
    ["data.max_rows=10", "data.max_prompt_length=null"],
    ["peft=lora", "peft.target_modules=all-linear", "peft.alpha=16.5"],
    ["weighting=lcpo", "weighting.annotator_column=labeler"],
    ["seed=12345"],
    ["trainer.resume=never"],
]


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(o) for o in GOOD])
def test_good_values_validate(overrides):
    validate(compose_cfg(overrides))


TRAINING_ARGUMENT_ERRORS = [  # combinations only transformers.TrainingArguments knows to refuse
    (["trainer.logging_steps=2.5"], "trainer.logging_steps"),
    (["++trainer.load_best_model_at_end=true", "trainer.eval_strategy=steps", "trainer.eval_steps=5"],
     "trainer.load_best_model_at_end"),
    (["++trainer.dataloader_prefetch_factor=2"], "trainer.dataloader_prefetch_factor"),
    (["trainer.lr_scheduler_type=reduce_lr_on_plateau"], "trainer.lr_scheduler_type"),
    (["trainer.fp16=true", "trainer.bf16=true", "trainer.use_cpu=true"], "trainer.fp16"),
]


@pytest.mark.parametrize("overrides,key", TRAINING_ARGUMENT_ERRORS, ids=[" ".join(o) for o, _ in TRAINING_ARGUMENT_ERRORS])
def test_training_arguments_errors_become_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(overrides))
    assert str(exc.value).startswith(key), str(exc.value)
    assert "\n" not in str(exc.value)


def test_validation_builds_training_arguments_without_a_process_group_or_deepspeed(tmp_path):
    """Under a 2-process launch environment, validate() must not start torch.distributed, accelerate or DeepSpeed."""
    script = (
        "import json, sys, torch\n"
        "from accelerate.state import PartialState\n"
        "from tests.helpers.runs import compose_cfg\n"
        "from po.run.validate import validate\n"
        "from po.errors import ConfigError\n"
        "validate(compose_cfg(['deepspeed=zero2']))\n"
        "try:\n"
        "    validate(compose_cfg(['deepspeed=zero2', 'trainer.logging_steps=2.5']))\n"
        "except ConfigError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps({'dist': torch.distributed.is_initialized(), 'partial': bool(PartialState._shared_state),"
        " 'ds_env': __import__('os').environ.get('ACCELERATE_USE_DEEPSPEED'), 'error': error}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT="29591", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {"dist": False, "partial": False, "ds_env": None, "error": facts["error"]}
    assert facts["error"].startswith("trainer.logging_steps")
    assert "Setting accelerator" not in proc.stdout + proc.stderr and "ds_accelerator" not in proc.stdout + proc.stderr


class HalfMarginLoss(PreferenceLoss):
    """A loss defined outside `losses/`: any PreferenceLoss subclass is a valid `loss._target_`."""

    built = 0

    def __init__(self, beta: float = 0.1, normalize: bool = False):
        super().__init__()
        type(self).built += 1
        self.beta, self.normalize = check_positive("beta", beta), normalize

    def forward(self, batch: PairBatch) -> LossOutput:
        chosen, rejected = batch.log_ratios()
        rewards = (self.beta * chosen.detach(), self.beta * rejected.detach())
        return LossOutput(-(chosen - rejected) / 2, *rewards, metrics=common_metrics(batch, rewards))


TARGET = f"{HalfMarginLoss.__module__}.{HalfMarginLoss.__qualname__}"

REFUSED_TARGETS = [
    (["~loss.beta", "~loss.label_smoothing", "loss._target_=torch.nn.Linear", "+loss.in_features=2",
      "+loss.out_features=2"], "loss._target_=torch.nn.Linear"),
    (["loss._target_=losses.base.masked_sum"], "loss._target_=losses.base.masked_sum"),
    (["loss._target_=builtins.print"], "loss._target_=builtins.print"),
    (["+weighting._target_=os.system", "+weighting.command=true"], "weighting._target_=os.system"),
    (["+loss._partial_=true"], "loss._partial_"),
    (["+loss._args_=[1]"], "loss._args_"),
    (["+loss.extra={_target_: builtins.print}"], "loss.extra._target_=builtins.print"),
    (["+seed_maker._target_=random.seed"], "seed_maker._target_=random.seed"),
]


@pytest.mark.parametrize("overrides,needle", REFUSED_TARGETS, ids=[o[-1] for o, _ in REFUSED_TARGETS])
def test_targets_outside_the_allowed_kinds_are_refused(overrides, needle):
    with pytest.raises(ConfigError) as exc:
        validate(compose_cfg(overrides))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_unimportable_target_is_one_line():
    with pytest.raises(ConfigError, match=r"loss\._target_=no_such_module\.Loss: cannot import"):
        validate(compose_cfg(["loss._target_=no_such_module.Loss"]))


def test_a_preference_loss_from_anywhere_is_built_with_checked_values():
    cfg = compose_cfg(["~loss.label_smoothing", f"loss._target_={TARGET}", "loss.beta=0.3", "+loss.normalize=true"])
    validate(cfg)
    loss = build_loss(cfg.loss, cfg.weighting)
    assert isinstance(loss, HalfMarginLoss) and loss.beta == 0.3 and loss.normalize is True
    HalfMarginLoss.built = 0
    with pytest.raises(ConfigError, match=r"loss\.normalize=yes: .*true or false"):
        validate(compose_cfg(["~loss.label_smoothing", f"loss._target_={TARGET}", "+loss.normalize=yes"]))
    assert HalfMarginLoss.built == 0, "the constructor ran before its values were checked"


def test_check_helpers_reject_non_finite_and_non_numbers():
    for bad in (float("inf"), float("nan"), "abc", True, None):
        with pytest.raises(ValueError, match="loss.beta must be > 0"):
            check_positive("beta", bad)
    for bad in (float("nan"), "abc", False, float("inf")):
        with pytest.raises(ValueError, match=r"loss.eps must be in \[0.0, 0.5\)"):
            check_in_range("eps", bad, 0.0, 0.5)
    assert check_positive("beta", 1) == 1.0 and math.isclose(check_in_range("eps", 0.1, 0.0, 0.5), 0.1)


# Defaults that do not trap ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["jsonl", "hh", "ultrafeedback", "mixture"])
def test_max_length_alone_derives_the_prompt_cap(option):
    """`data.max_length=512` alone was an error: max_prompt_length was a fixed 512. It is now half of max_length."""
    needs = NEEDS.get(("data", option), [])
    cfg = compose_cfg([f"data={option}", *needs, "data.max_length=512"])
    validate(cfg)
    assert cfg.data.max_prompt_length == 256
    assert compose_cfg([f"data={option}", *needs]).data.max_prompt_length == 512  # the default is unchanged
    assert compose_cfg([f"data={option}", *needs, "data.max_prompt_length=null"]).data.max_prompt_length is None
    with pytest.raises(ConfigError, match="data.max_prompt_length=600"):
        validate(compose_cfg([f"data={option}", *needs, "data.max_length=512", "data.max_prompt_length=600"]))


@pytest.mark.parametrize("overrides,strategy,steps", [
    ([], "no", None),
    (["trainer.save_steps=5"], "steps", 5),                             # setting save_steps means saving
    (["trainer.save_strategy=steps", "trainer.save_steps=3"], "steps", 3),
    (["trainer.save_strategy=no", "trainer.save_steps=5"], "no", 5),    # an explicit strategy wins
    (["trainer.save_strategy=steps"], "steps", 500),                    # transformers' own default interval
    (["trainer.save_strategy=epoch"], "epoch", None),
])
def test_save_steps_alone_means_saving(tmp_path, overrides, strategy, steps):
    from po.run.build import training_arguments

    cfg = compose_cfg(overrides)
    validate(cfg)
    args = training_arguments(cfg.trainer, cfg.deepspeed, cfg.seed, tmp_path)
    assert args.save_strategy == SaveStrategy(strategy)
    if steps is not None:
        assert args.save_steps == steps


def test_eval_steps_alone_means_evaluating(tmp_path):
    from po.run.build import training_arguments

    assert training_arguments(*_args_of(compose_cfg(["trainer.eval_steps=7"])), tmp_path).eval_strategy.value == "steps"
    assert training_arguments(*_args_of(compose_cfg([])), tmp_path).eval_strategy.value == "no"


def test_trainer_kwargs_use_current_names():
    kwargs = trainer_kwargs(compose_cfg([]).trainer)
    assert "gradient_checkpointing" not in kwargs and kwargs["activation_checkpointing"] is False
    if not torch.accelerator.is_available():
        assert kwargs["dataloader_pin_memory"] is False  # nothing to pin memory for


def test_gradient_checkpointing_uses_the_current_name():
    """model.gradient_checkpointing=true turns checkpointing on without transformers' rename FutureWarning."""
    import warnings

    from po.models.policy import load_policy
    from po.models.tokenizer import load_tokenizer

    cfg = compose_cfg(["model.gradient_checkpointing=true"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_policy(cfg.model, load_tokenizer(cfg.model), 0)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


NOISE = re.compile(r"FutureWarning|DeprecationWarning|UserWarning|Setting accelerator|ds_accelerator")


@pytest.mark.slow
def test_default_job_prints_no_warnings_the_user_did_not_cause(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "po.cli", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [line for line in (proc.stdout + proc.stderr).splitlines() if NOISE.search(line)]
    assert noise == []
    assert (tmp_path / "run" / "summary.json").is_file()


def _args_of(cfg):
    """The groups `training_arguments` reads."""
    return cfg.trainer, cfg.deepspeed, cfg.seed
