"""Build the policy and (when asked) a frozen reference copy from the `model` config group.

`model=tiny` builds a small random-initialized causal LM from a config (any architecture transformers knows, Llama
by default) with the shipped tokenizer: no network. `model=hf` loads any Hugging Face causal LM by id or path.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from po.errors import POError
from po.models.tokenizer import not_found
from po.models.warmup import apply_warmup, cache_path, warmup_key, warmup_settings
from po.models.zero import copy_plain_init, without_zero3_init

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype | str:
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise POError(f"model.dtype={name}: use one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def build_tiny_model(cfg: DictConfig, tokenizer, seed: int) -> PreTrainedModel:
    """A model of `cfg.architecture` with `cfg.config` sizes, random-initialized and then, with `model.warmup`,
    warmed up on the toy set's answers (po/models/warmup.py); deterministic given `seed`."""
    sizes = OmegaConf.to_container(cfg.config, resolve=True)
    config = AutoConfig.for_model(
        cfg.architecture, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sizes,
    )
    if cfg.get("attn_implementation"):
        config._attn_implementation = cfg.attn_implementation
    def build() -> PreTrainedModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_config(config, dtype=torch_dtype(cfg.dtype))

    def plain() -> PreTrainedModel:  # the starting weights as built without DeepSpeed
        model = build()
        apply_warmup(model, cfg, tokenizer, seed)
        return model

    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # same seed, same weights with or without ZeRO-3
        model = build()
        copy_plain_init(model, plain)
        return model
    return plain()


def fill_warmup_cache(cfg: DictConfig, tokenizer, seed: int) -> None:
    """Store the tiny model's warmed-up weights in the warm-up cache, if `model.warmup` is on and they are not there.

    In a multi-process job po-train calls it on global rank 0 alone before any rank builds its models
    (`po.run.distributed.run_on_main`), so a job warms up once, not once per rank or node; every model built
    afterwards reads the cache. (A single process warms up when it builds its policy.)"""
    if cfg.kind != "tiny" or warmup_settings(cfg) is None:
        return
    if cache_path(cfg, warmup_key(cfg, tokenizer, seed)).is_file():  # stored already (read and verified when used)
        return
    with without_zero3_init():  # one process alone: a whole model, not ZeRO-3 shards
        build_tiny_model(cfg, tokenizer, seed)


def load_policy(cfg: DictConfig, tokenizer, seed: int, **load_kwargs) -> PreTrainedModel:
    """The policy model as the `model` group describes it (PEFT is applied later, in `po.models.peft`).

    `load_kwargs` go to `from_pretrained` (e.g. the 4-bit `quantization_config` of `peft=qlora`).
    """
    if cfg.kind == "tiny":
        model = build_tiny_model(cfg, tokenizer, seed)
    else:
        kwargs = {"dtype": torch_dtype(cfg.dtype), "revision": cfg.get("revision"),
                  "trust_remote_code": cfg.get("trust_remote_code", False), **load_kwargs}
        if cfg.get("attn_implementation"):
            kwargs["attn_implementation"] = cfg.attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
        except (OSError, ValueError) as exc:
            raise not_found("model", cfg.name_or_path, exc) from exc
    if cfg.get("gradient_checkpointing"):
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    return model


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass (non-reentrant). transformers 5.23 renamed gradient checkpointing
    to activation checkpointing (the old method name warns); pyproject.toml requires it."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def load_reference(cfg: DictConfig, tokenizer, seed: int, policy: PreTrainedModel) -> PreTrainedModel:
    """A frozen copy of the starting policy: rebuilt from the same source, so the weights are identical."""
    if cfg.kind == "tiny":
        ref = build_tiny_model(cfg, tokenizer, seed)
    else:
        ref = load_policy(OmegaConf.merge(cfg, {"gradient_checkpointing": False}), tokenizer, seed)
    return ref.eval().requires_grad_(False)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ds_numel: full size under ZeRO-3
