"""Configuration helpers: where `conf/` lives, the one `instantiate` route, and `validate(cfg)`.

`validate` runs before any model or data is loaded and turns every cross-group mistake into one sentence that
says what to change (a `ConfigError`, printed by the CLI without a traceback).
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import hydra.utils
from omegaconf import DictConfig, OmegaConf

from po.errors import ConfigError
from po.loss_params import loss_trains_parameters

# Keys of the `trainer` group that are po's own, not transformers.TrainingArguments fields.
PO_TRAINER_KEYS = {"logps_chunk_size", "resume", "overwrite", "max_bad_steps", "checkpoint_checksums", "packing",
                   "trust_checkpoint"}


def conf_dir() -> Path:
    """The Hydra config folder: `conf/` beside this package in a source checkout, else the installed `po.conf`."""
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "train.yaml").is_file():
        return source
    return Path(str(resources.files("po.conf")))


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """Every `_target_` in the project is built here (Hydra 1.4 will want an allowlist in one place)."""
    return hydra.utils.instantiate(node, _convert_="all", **kwargs)


def build_loss(cfg: DictConfig) -> Any:
    """The configured loss, wrapped by the configured weighting (if any). Bad values raise `ConfigError`."""
    try:
        loss = instantiate(cfg.loss)
    except Exception as exc:  # Hydra wraps the constructor's ValueError; report the root cause in one line
        raise ConfigError(_root_message(exc, f"loss ({cfg.loss.get('_target_', '?')})")) from exc
    if cfg.weighting.get("_target_"):
        try:
            loss = instantiate(cfg.weighting, loss=loss)
        except Exception as exc:
            raise ConfigError(_root_message(exc, "weighting")) from exc
    return loss


def _root_message(exc: BaseException, what: str) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    message = str(root).splitlines()[0] if str(root) else type(root).__name__
    return f"{what}: {message}"


def training_argument_fields() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The `trainer` group minus po's own keys: exactly the TrainingArguments fields the user set."""
    values = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {k: v for k, v in values.items() if k not in PO_TRAINER_KEYS}


def validate(cfg: DictConfig) -> None:
    """Check cross-group rules before anything heavy is loaded; raise `ConfigError` with what to change."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(sorted(missing))}; set them on the command line, "
                          f"e.g. {sorted(missing)[0]}=...")
    unknown = set(cfg.trainer) - training_argument_fields() - PO_TRAINER_KEYS
    if unknown:
        raise ConfigError(f"trainer.{sorted(unknown)[0]} is not a transformers.TrainingArguments field "
                          "(nor one of po's trainer keys); check the spelling")
    if cfg.data.max_length < 2:
        raise ConfigError(f"data.max_length={cfg.data.max_length}: must be at least 2 (a prompt and a response token)")
    mpl = cfg.data.get("max_prompt_length")
    if mpl is not None and not 0 < mpl < cfg.data.max_length:
        raise ConfigError(f"data.max_prompt_length={mpl}: must be between 1 and data.max_length-1")
    from po.data.options import check_data_config

    check_data_config(cfg.data)
    loss = build_loss(cfg)
    strategy = cfg.reference.strategy
    if strategy not in {"auto", "model", "adapter", "none", "cached"}:
        raise ConfigError(f"reference={strategy}: use one of auto, model, adapter, cached, none")
    needs = set(getattr(loss, "needs", {"token_logps"}))
    if strategy == "cached" and not needs <= {"token_logps"}:  # po.refcache stores token log-probs only
        raise ConfigError(f"reference=cached stores only per-token reference log-probs, but {cfg.loss._target_} "
                          f"also needs {sorted(needs - {'token_logps'})}; use reference=model (or adapter)")
    peft = cfg.peft.get("method", "none")
    if strategy in {"cached", "none"} and "token_kl" in getattr(loss, "needs", ()):
        raise ConfigError(f"reference={strategy} cannot serve {cfg.loss._target_}: it needs the live reference "
                          "model's full logits (the token KL over the whole vocabulary) and hidden states at every "
                          "step, which cached log-probs do not contain; use reference=auto (or model/adapter)")
    if cfg.deepspeed.get("config") and loss_trains_parameters(loss):
        raise ConfigError(f"{cfg.loss._target_} trains its own parameters (a learned mask network), which po does not "
                          "yet hand to DeepSpeed's optimizer; use deepspeed=none (DDP via torchrun works) or "
                          "loss.mask=activations / loss.mask=none")
    if strategy == "none" and loss.needs_reference:
        raise ConfigError(f"{cfg.loss._target_} needs reference log-probs; use reference=auto (or model/adapter), "
                          "or a reference-free loss such as loss=simpo")
    if strategy == "adapter" and peft == "none":
        raise ConfigError("reference=adapter needs a PEFT policy (peft=lora or peft=qlora); use reference=model")
    from po.peft import validate_peft

    validate_peft(cfg)
