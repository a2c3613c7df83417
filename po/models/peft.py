"""PEFT for the policy: LoRA adapters (`peft=lora`), on a 4-bit base (`peft=qlora`).

`apply_peft` wraps the loaded policy with `peft.get_peft_model`; the base weights freeze and only adapters train.
The reference is then the same model with its adapters disabled (`reference=auto` -> `adapter`), so no second
model is loaded. The export (adapter, or merged with `model.merge_lora_on_save=true`) is po/run/export.py.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from po.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("none", "lora", "qlora")
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def method(peft_cfg: DictConfig) -> str:
    return peft_cfg.get("method", "none")


def quantization_kwargs(peft_cfg: DictConfig) -> dict[str, Any]:
    """`from_pretrained` kwargs that load the base model in 4-bit for `peft=qlora`; {} otherwise."""
    if method(peft_cfg) != "qlora":
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=peft_cfg.quant_type,
        bnb_4bit_use_double_quant=peft_cfg.double_quant,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[peft_cfg.compute_dtype])}


def lora_config(peft_cfg: DictConfig):
    from peft import LoraConfig, TaskType

    targets = peft_cfg.target_modules
    targets = OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets
    saved = peft_cfg.get("modules_to_save")
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
        target_modules=targets, bias=peft_cfg.bias,
        modules_to_save=OmegaConf.to_container(saved) if OmegaConf.is_config(saved) else saved,
    )


def apply_peft(model: torch.nn.Module, peft_cfg: DictConfig, checkpointing: bool = False) -> torch.nn.Module:
    """The policy wrapped with adapters per the `peft` group (unchanged for `peft=none`); `checkpointing`: the
    model uses activation checkpointing (`model.gradient_checkpointing`)."""
    if method(peft_cfg) == "none":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method(peft_cfg) == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    try:
        with warnings.catch_warnings():  # peft asks the model the pre-rename question; not the user's concern
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = get_peft_model(model, lora_config(peft_cfg))
    except ValueError as exc:  # e.g. no module matches target_modules
        raise ConfigError(f"peft.target_modules: {str(exc).splitlines()[0]}") from exc
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("peft=%s: %d of %d parameters train (%.2f%%)", method(peft_cfg), trainable, total, 100 * trainable / total)
    return model


def is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)
