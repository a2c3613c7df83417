"""DeepSpeed ZeRO helpers: a sharded frozen reference model, and what ZeRO changes around the trainer.

Under ZeRO-3 the policy is sharded by the Trainer; a plain frozen reference would be a full copy on every rank.
`prepare_reference` wraps it in its own DeepSpeed engine (the training config minus optimizer and offloaded
optimizer state), so its weights are sharded the same way and gathered layer by layer during its forward pass.
Under ZeRO-1/2 every rank holds full weights anyway, so the reference stays a plain module in the run's dtype.
(The module is not named `deepspeed.py` so that it can never shadow the `deepspeed` package.)
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)


def zero_stage(ds_config: dict | None) -> int:
    """The ZeRO stage of a DeepSpeed config; 0 without one."""
    return int(((ds_config or {}).get("zero_optimization") or {}).get("stage", 0))


def inference_config(train_config: dict, model: torch.nn.Module) -> dict:
    """The training DeepSpeed config for a frozen model: no optimizer or schedule, model-size `auto`s filled."""
    config = copy.deepcopy(train_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero.pop("offload_optimizer", None)
    hidden = getattr(model.config.get_text_config(), "hidden_size", None)
    sized = {"reduce_bucket_size": lambda h: h * h, "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
             "stage3_param_persistence_threshold": lambda h: 10 * h}
    for key, value in sized.items():
        if zero.get(key) == "auto":
            if hidden is None:
                raise ValueError(f"zero_optimization.{key}=auto needs the model's hidden_size; set a number")
            zero[key] = value(hidden)
    return config


def prepare_reference(model: torch.nn.Module, ds_config: dict | None, world_size: int) -> torch.nn.Module:
    """The frozen reference as the run's DeepSpeed config (`TrainingArguments.hf_deepspeed_config.config`, its
    `auto`s filled from the trainer group) wants it: a ZeRO-3 inference engine, else the model as is."""
    if zero_stage(ds_config) != 3:
        return model
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, config=inference_config(ds_config, model))
    log.info("reference model: DeepSpeed ZeRO-3 inference engine (sharded over %d ranks)", world_size)
    engine.eval()
    return engine


@contextlib.contextmanager
def without_zero3_init() -> Iterator[None]:
    """Models built inside are whole, plain modules even when the run uses ZeRO-3.

    Under ZeRO-3 transformers builds every model inside `deepspeed.zero.Init`, which shards it over all ranks: such
    a model runs only inside a DeepSpeed engine, and only when every rank runs it together. A model that one rank
    uses alone (the reference that fills `reference=cached` on a cache miss) or a plain copy to take weights from
    must be built outside it.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ds_config = hf_deepspeed._hf_deepspeed_config_weak_ref() if hf_deepspeed._hf_deepspeed_config_weak_ref else None
    if ds_config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(ds_config)


def copy_plain_init(model: torch.nn.Module, build) -> None:
    """Give a model built under ZeRO-3's `zero.Init` the weights `build()` gives without DeepSpeed.

    transformers initializes weights differently under `zero.Init` (after partitioning, module by module), so a
    seeded tiny model would start elsewhere than the same run without DeepSpeed. For models built from a config
    (small by construction) the plain build is made once and copied into the shards.
    """
    import deepspeed

    with without_zero3_init():
        plain = build()
    state = plain.state_dict()
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.data.copy_(state[name])
