"""PEFT for the policy: LoRA adapters (`peft=lora`), on a 4-bit base (`peft=qlora`), and the final export.

`apply_peft` wraps the loaded policy with `peft.get_peft_model`; the base weights freeze and only adapters train.
The reference is then the same model with its adapters disabled (`reference=auto` -> `adapter`), so no second
model is loaded. `export_model` writes either the adapter (PEFT format, small) or, with
`model.merge_lora_on_save=true`, a plain Hugging Face model with the adapters merged into the base weights.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from po.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("none", "lora", "qlora")
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def method(cfg: DictConfig) -> str:
    return cfg.peft.get("method", "none")


def validate_peft(cfg: DictConfig) -> None:
    """Config-time checks for the `peft` group (called by `po.config.validate`, before any model loads)."""
    name = method(cfg)
    if name not in METHODS:
        raise ConfigError(f"peft.method={name}: use one of {', '.join(METHODS)}")
    if name == "qlora":
        if not torch.cuda.is_available():
            raise ConfigError("peft=qlora loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                              "on this machine use peft=lora")
        if cfg.model.kind != "hf":
            raise ConfigError("peft=qlora quantizes a pretrained checkpoint; use model=hf model.name_or_path=...")
        if cfg.peft.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"peft.compute_dtype={cfg.peft.compute_dtype}: use one of {', '.join(COMPUTE_DTYPES)}")
    if name == "none" and cfg.model.get("merge_lora_on_save"):
        raise ConfigError("model.merge_lora_on_save=true needs peft=lora (there is no adapter to merge)")
    stage = ((cfg.deepspeed.get("config") or {}).get("zero_optimization") or {}).get("stage", 0)
    if name != "none" and cfg.model.get("merge_lora_on_save") and stage == 3:
        raise ConfigError("model.merge_lora_on_save=true is not supported under deepspeed=zero3 (the base weights "
                          "are sharded); save the adapter and merge it afterwards with peft's merge_and_unload()")


def quantization_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """`from_pretrained` kwargs that load the base model in 4-bit for `peft=qlora`; {} otherwise."""
    if method(cfg) != "qlora":
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=cfg.peft.quant_type,
        bnb_4bit_use_double_quant=cfg.peft.double_quant,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[cfg.peft.compute_dtype])}


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


def apply_peft(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """The policy wrapped with adapters per `cfg.peft` (unchanged for `peft=none`)."""
    if method(cfg) == "none":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method(cfg) == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing")))
    elif cfg.model.get("gradient_checkpointing"):
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    try:
        with warnings.catch_warnings():  # peft asks the model the pre-rename question; not the user's concern
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = get_peft_model(model, lora_config(cfg.peft))
    except ValueError as exc:  # e.g. no module matches target_modules
        raise ConfigError(f"peft.target_modules: {str(exc).splitlines()[0]}") from exc
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("peft=%s: %d of %d parameters train (%.2f%%)", method(cfg), trainable, total, 100 * trainable / total)
    return model


def is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def export_model(trainer, cfg: DictConfig, out_dir: Path, tokenizer=None) -> dict[str, str]:
    """Save the final model (and `tokenizer`) into `out_dir`, whole or not at all; return facts for the summary.

    Every rank calls it. The files are written into a temporary folder beside `out_dir`, which replaces `out_dir`
    only once every rank's writes succeeded (`staged_dir_for_all_ranks`): a kill leaves no half-written model,
    and a full disk or a read-only folder is one line naming `out_dir`, with the temporary folder removed.
    Full fine-tuning and unmerged PEFT go through `trainer.save_model` (it gathers ZeRO-3 shards). With
    `model.merge_lora_on_save=true` the adapters are merged into the base weights and a plain model is saved.
    """
    from po.run.distributed import staged_dir_for_all_ranks
    from po.trainer.reliable import io_failure

    out_dir = Path(out_dir)
    with staged_dir_for_all_ranks(out_dir) as staged:
        try:
            facts = _save_model(trainer, cfg, staged)
            if tokenizer is not None and trainer.is_world_process_zero():
                tokenizer.save_pretrained(str(staged))
        except Exception as exc:
            failure = io_failure(out_dir, exc)
            if failure is None:
                raise
            raise failure from exc
    if facts.get("model_format") == "peft adapter":
        facts["load_with"] = (f"peft.AutoPeftModelForCausalLM.from_pretrained('{out_dir}') "
                              "(or merge: .merge_and_unload())")
    return facts


def _save_model(trainer, cfg: DictConfig, out_dir: Path) -> dict[str, str]:
    from po.trainer.preference_trainer import save_loss_state

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft_model(model):
        trainer.save_model(str(out_dir))
        return {"model_format": "hf"}
    if cfg.model.get("merge_lora_on_save"):
        if trainer.is_world_process_zero():
            merged = model.merge_and_unload()
            merged.save_pretrained(str(out_dir))
            save_loss_state(trainer.loss_module, str(out_dir))
        trainer.accelerator.wait_for_everyone()
        return {"model_format": "hf (LoRA merged)"}
    trainer.save_model(str(out_dir))
    return {"model_format": "peft adapter"}
