"""`validate(cfg)`: the whole composed config checked before anything heavy loads; returns the loss, built once.

Every entry point (po-train, po-cache-ref, po-data, recipes) runs it first. Each mistake it can see is one sentence
that says what to change (a `ConfigError`, printed by the CLI without a traceback): crafted `_target_`s
(po.config), bad values (po.run.values), TrainingArguments' own checks, and the rules between groups below.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from omegaconf import DictConfig, OmegaConf

from losses.base import NEEDS, SIGNALS, TOKEN_KL, TOKEN_LOGPS, PreferenceLoss
from po.config import PO_TRAINER_KEYS, build_loss, check_targets, conf_dir, trainer_kwargs
from po.data.options import check_data_config
from po.errors import ConfigError
from po.judge.judges import check_judge
from po.models.peft import COMPUTE_DTYPES, METHODS
from po.run.distributed import quiet_unused_deepspeed
from po.run.values import check_training_arguments, check_values
from po.step.reference import STRATEGIES


@functools.cache
def training_argument_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def validate(cfg: DictConfig) -> PreferenceLoss:
    """Check targets, values and the rules between groups; return the configured loss (wrapped by its weighting)."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(sorted(missing))}; set them on the command line, "
                          f"e.g. {sorted(missing)[0]}=...")
    classes = check_targets(cfg)
    check_values(cfg, conf_dir(), classes)
    unknown = set(cfg.trainer) - training_argument_fields() - PO_TRAINER_KEYS
    if unknown:
        raise ConfigError(f"trainer.{sorted(unknown)[0]} is not a transformers.TrainingArguments field "
                          "(nor one of po's trainer keys); check the spelling")
    mpl = cfg.data.get("max_prompt_length")
    if mpl is not None and not mpl < cfg.data.max_length:
        raise ConfigError(f"data.max_prompt_length={mpl}: must be between 1 and data.max_length-1 "
                          f"(data.max_length={cfg.data.max_length}); or leave it out (default: half of max_length)")
    check_training_arguments(trainer_kwargs(cfg.trainer))
    quiet_unused_deepspeed(bool(cfg.deepspeed.get("config")))
    check_data_config(cfg.data)
    loss = build_loss(cfg.loss, cfg.weighting)
    check_loss_fits(loss, cfg)
    validate_peft(cfg.peft, cfg.model, cfg.deepspeed)
    if "judge" in cfg:
        check_judge(cfg.judge, _zero_stage(cfg.deepspeed))
    return loss


def check_loss_fits(loss: PreferenceLoss, cfg: DictConfig) -> None:
    """The rules between the loss's declared needs and the `reference`, `peft` and `deepspeed` groups."""
    name = cfg.loss._target_
    unknown = sorted(set(loss.needs) - set(NEEDS))
    if unknown:
        raise ConfigError(f"{name} needs {unknown[0]}, which po does not compute; a loss's needs are among "
                          f"{', '.join(NEEDS)} (losses/base.py)")
    strategy = cfg.reference.strategy
    if strategy not in STRATEGIES:
        raise ConfigError(f"reference={strategy}: use one of {', '.join(STRATEGIES)}")
    if strategy == "cached" and not loss.needs <= {TOKEN_LOGPS}:  # the cache stores token log-probs only
        raise ConfigError(f"reference=cached stores only per-token reference log-probs, but {name} "
                          f"also needs {sorted(loss.needs - {TOKEN_LOGPS})}; use reference=model (or adapter)")
    if strategy in {"cached", "none"} and TOKEN_KL in loss.needs:
        raise ConfigError(f"reference={strategy} cannot serve {name}: it needs the live reference "
                          "model's full logits (the token KL over the whole vocabulary) and hidden states at every "
                          "step, which cached log-probs do not contain; use reference=auto (or model/adapter)")
    if cfg.deepspeed.get("config") and loss.trains_parameters:
        raise ConfigError(f"{name} trains its own parameters (a learned mask network) outside the model, "
                          "and DeepSpeed's ZeRO optimizer takes only the parameters of the model in its engine (it "
                          "fails at start-up on others); use deepspeed=none (DDP via torchrun works) or "
                          "loss.mask=activations / loss.mask=none")
    if strategy == "none" and loss.needs_reference:
        raise ConfigError(f"{name} needs reference log-probs; use reference=auto (or model/adapter), "
                          "or a reference-free loss such as loss=simpo")
    check_signals(loss, cfg.data, name)
    if strategy == "adapter" and cfg.peft.get("method", "none") == "none":
        raise ConfigError("reference=adapter needs a PEFT policy (peft=lora or peft=qlora); use reference=model")


def check_signals(loss: PreferenceLoss, data_cfg: DictConfig, name: str) -> None:
    """A per-pair signal column (margin, confidence) configured for a loss that does not read it would be silently
    ignored: refuse it. Per-pair weights work with every loss."""
    columns = data_cfg.get("extra_columns") or {}
    for signal in SIGNALS:
        source = (f"data.extra_columns.{signal}={columns.get(signal)}" if columns.get(signal)
                  else f"data.strength_as={signal}" if data_cfg.get("strength_as") == signal else None)
        if source and signal not in loss.signals:
            takes = ", ".join(sorted(loss.signals)) or "none"
            raise ConfigError(f"{source}: {name} does not read a per-pair {signal} (it takes: {takes}); use a loss "
                              f"that does (docs/losses.md, e.g. loss=dpo), or data.extra_columns.weight for a "
                              "per-pair weight, which every loss takes")


def validate_peft(peft_cfg: DictConfig, model_cfg: DictConfig, deepspeed_cfg: DictConfig) -> None:
    """Config-time checks for the `peft` group, before any model loads."""
    name = peft_cfg.get("method", "none")
    if name not in METHODS:
        raise ConfigError(f"peft.method={name}: use one of {', '.join(METHODS)}")
    if name == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("peft=qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                              "on this machine use peft=lora")
        if model_cfg.kind != "hf":
            raise ConfigError("peft=qlora quantizes a pretrained checkpoint; use model=hf model.name_or_path=...")
        if peft_cfg.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"peft.compute_dtype={peft_cfg.compute_dtype}: use one of {', '.join(COMPUTE_DTYPES)}")
    if name == "none" and model_cfg.get("merge_lora_on_save"):
        raise ConfigError("model.merge_lora_on_save=true needs peft=lora (there is no adapter to merge)")
    stage = _zero_stage(deepspeed_cfg)
    if name != "none" and model_cfg.get("merge_lora_on_save") and stage == 3:
        raise ConfigError("model.merge_lora_on_save=true is not supported under deepspeed=zero3 (the base weights "
                          "are sharded); save the adapter and merge it afterwards with peft's merge_and_unload()")


def _zero_stage(deepspeed_cfg: DictConfig) -> int:
    return ((deepspeed_cfg.get("config") or {}).get("zero_optimization") or {}).get("stage", 0)
