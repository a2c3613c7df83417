"""Configuration: where `conf/` lives, the one `instantiate` route, the loss built from its groups, and the
`trainer` group as `transformers.TrainingArguments` takes it. (`po.run.validate` checks a whole config.)

Configs build only what they name: a `_target_` is accepted only where a group documents one (`loss` and
`weighting`, a `losses.base.PreferenceLoss` class), it is resolved and checked before anything is called, and the
class is then called with the group's keys. Nothing nested is built (Hydra's recursive instantiation is not used),
so `+loss.x._target_=builtins.open` or `loss._target_=torch.load` cannot run.
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from losses.base import PreferenceLoss
from po.errors import ConfigError
from po.value_specs import check_arguments

# Keys of the `trainer` group that are po's own, not transformers.TrainingArguments fields.
PO_TRAINER_KEYS = {"logps_chunk_size", "resume", "overwrite", "max_bad_steps", "checkpoint_checksums", "packing",
                   "trust_checkpoint"}
# Hydra's instantiate keys. Only `_target_`, and only at the top of a group below, is accepted.
HYDRA_KEYS = {"_target_", "_args_", "_partial_", "_convert_", "_recursive_"}


def _built_kinds() -> dict[str, type]:
    """The groups whose `_target_` po builds, and the class it must subclass (documented in their YAML)."""
    return {"loss": PreferenceLoss, "weighting": PreferenceLoss}


def _half(n: Any) -> Any:
    """`${po.half:${.max_length}}`: the default prompt cap is half the sequence budget (None while max_length is
    not an integer; `validate` then names max_length)."""
    return n // 2 if isinstance(n, int) and not isinstance(n, bool) else None


OmegaConf.register_new_resolver("po.half", _half, replace=True)


def conf_dir() -> Path:
    """The Hydra config folder: `conf/` beside this package in a source checkout, else the installed `po.conf`."""
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "train.yaml").is_file():
        return source
    return Path(str(resources.files("po.conf")))


def resolve_target(path: Any, key: str = "_target_") -> Any:
    """The object a dotted `_target_` names, found by importing its module; nothing is called."""
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"{key}={path}: use a dotted path to a class, e.g. losses.dpo.DPOLoss")
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # not a module: try a shorter prefix
            raise ConfigError(f"{key}={path}: cannot import {module_name}: {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"{key}={path}: cannot import {module_name}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            raise ConfigError(f"{key}={path}: {module_name} has no {'.'.join(parts[cut:])}") from exc
        return obj
    raise ConfigError(f"{key}={path}: cannot import {parts[0]} (is it installed, or on PYTHONPATH?)")


def _hydra_keys(node: Any, prefix: str):
    """(dotted key, value) of every Hydra instantiate key anywhere under `node` (dicts and lists)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}[{key}]" if isinstance(node, list) else f"{prefix}.{key}" if prefix else str(key)
        if key in HYDRA_KEYS:
            yield path, value
        yield from _hydra_keys(value, path)


def _refuse_hydra_keys(values: dict[str, Any]) -> None:
    """Accept only `<group>._target_` of the groups po builds; any other Hydra key, at any depth, is refused."""
    kinds = _built_kinds()
    for key, value in _hydra_keys(values, ""):
        group, _, rest = key.partition(".")
        if rest == "_target_" and group in kinds:
            continue
        if key.endswith("._target_"):
            base = kinds["loss"]
            raise ConfigError(f"{key}={value}: po builds no object here; only "
                              f"{' and '.join(f'{g}._target_' for g in kinds)} name a class (a "
                              f"{base.__module__}.{base.__name__}); remove it with ~{key}")
        raise ConfigError(f"{key}: Hydra's instantiate options are not accepted; a {group} is built as "
                          f"{group}._target_(**its other keys); remove it with ~{key}")


def _target_class(group: str, target: Any) -> type:
    """The class `group._target_` names, if it is the kind the group documents (resolved, not called)."""
    base = _built_kinds()[group]
    cls = resolve_target(target, f"{group}._target_")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        example = {"loss": "losses.dpo.DPOLoss", "weighting": "losses.lcpo.LCPOWeighting"}[group]
        raise ConfigError(f"{group}._target_={target}: not a {base.__module__}.{base.__name__} subclass; a {group} "
                          f"builds only such a class (e.g. {example})")
    return cls


def check_targets(cfg: DictConfig) -> dict[str, type]:
    """Refuse every `_target_` outside the kinds its group documents, before anything is called.

    Returns {group: class} for the groups whose target is accepted (`loss`, and `weighting` when it has one).
    """
    _refuse_hydra_keys(OmegaConf.to_container(cfg, resolve=False))
    return {group: _target_class(group, cfg[group]._target_) for group in _built_kinds()
            if group in cfg and cfg[group].get("_target_") is not None}


def instantiate(node: DictConfig, group: str, **kwargs: Any) -> Any:
    """Every `_target_` in the project is built here: `group`'s documented kind, called with the group's keys.

    The target and every argument are checked first (kind, names, types); nested `_target_`s are refused.
    """
    values = OmegaConf.to_container(node, resolve=True)
    _refuse_hydra_keys({group: values})
    cls = _target_class(group, values.pop("_target_", None))
    check_arguments(group, values, cls)
    return cls(**values, **kwargs)


def build_loss(loss_cfg: DictConfig, weighting_cfg: DictConfig | None = None) -> PreferenceLoss:
    """The loss the `loss` group names, wrapped by the `weighting` group's (if it names one). Bad values raise
    `ConfigError`. Built once per command: `po.run.validate.validate` returns it."""
    try:
        loss = instantiate(loss_cfg, "loss")
    except ConfigError:
        raise
    except Exception as exc:  # the constructor's own check (ValueError): report it in one line
        raise ConfigError(_root_message(exc, f"loss ({loss_cfg.get('_target_', '?')})")) from exc
    if weighting_cfg is not None and weighting_cfg.get("_target_"):
        try:
            loss = instantiate(weighting_cfg, "weighting", loss=loss)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(_root_message(exc, "weighting")) from exc
    return loss


def _root_message(exc: BaseException, what: str) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    message = str(root).splitlines()[0] if str(root) else type(root).__name__
    return f"{what}: {message}"


def trainer_kwargs(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The `trainer` group minus po's own keys, as `transformers.TrainingArguments` takes them.

    po resolves two things first: `save_strategy: auto` (and `eval_strategy: auto`) is "steps" when
    `save_steps` (`eval_steps`) is set and "no" otherwise, so setting the interval alone means saving; and without
    an accelerator there is no pinned memory to use, so `dataloader_pin_memory` is off (torch would warn).
    """
    values = OmegaConf.to_container(trainer_cfg, resolve=True)
    kwargs = {k: v for k, v in values.items() if k not in PO_TRAINER_KEYS}
    for strategy, steps in (("save_strategy", "save_steps"), ("eval_strategy", "eval_steps")):
        if kwargs.get(strategy) == "auto":
            kwargs[strategy] = "steps" if kwargs.get(steps) is not None else "no"
    if kwargs.get("save_steps", 0) is None:
        del kwargs["save_steps"]  # transformers' own default interval (500) for an explicit save_strategy=steps
    if not torch.accelerator.is_available():
        kwargs["dataloader_pin_memory"] = False
    return kwargs
