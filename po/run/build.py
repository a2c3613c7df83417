"""Build everything a run trains with, from a composed config: arguments, data, models, reference, trainer.

Order (nothing heavy before it is needed): `TrainingArguments` (which starts a multi-process launch's process
group), tokenizer, data (tokenized once, cached), the zero-step check, the policy (with PEFT), the row layout, the
reference source the `reference` group names, the trainer. `build_trainer` takes already-loaded data, loss or
tokenizer, so a study (recipes/) can train the same way on data it made itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from losses.base import PreferenceLoss
from po.atomic import write_json_atomic
from po.config import trainer_kwargs
from po.data.collate import KeyedCollator, PackedPairCollator, PairCollator
from po.data.list_collate import ListCollator, PackedListCollator
from po.data.load import PreferenceData, load_preference_data
from po.errors import ConfigError
from po.models import policy as policy_models
from po.models.peft import apply_peft, quantization_kwargs
from po.models.tokenizer import load_tokenizer
from po.models.zero import prepare_reference, without_zero3_init
from po.run.distributed import deepspeed_cpu_state, is_main_process, main_first, run_on_main, world_size
from po.run.paths import RunPaths
from po.run.refcache import cache_dir, cache_key, cache_path, compute_table, open_cache
from po.run.validate import validate
from po.run.values import check_trains
from po.step.extras import needs_extras
from po.step.layouts import packing_support
from po.step.reference import AdapterReference, FrozenModelReference, ReferenceSource, resolve_strategy
from po.trainer.metrics import MetricsJsonl
from po.trainer.preference_trainer import PreferenceTrainer
from po.trainer.reliable import ReliabilitySettings

log = logging.getLogger(__name__)


def training_arguments(trainer_cfg: DictConfig, deepspeed_cfg: DictConfig, seed: int,
                       output_dir: Path) -> TrainingArguments:
    """The `trainer` group (and the `deepspeed` group's config) as `TrainingArguments`. Under a multi-process launch
    this starts the process group."""
    kwargs = trainer_kwargs(trainer_cfg)
    kwargs.update(output_dir=str(output_dir), remove_unused_columns=False, seed=seed, data_seed=seed)
    if deepspeed_cfg.get("config"):
        kwargs["deepspeed"] = OmegaConf.to_container(deepspeed_cfg.config, resolve=True)
        kwargs.update(deepspeed_cpu_state(deepspeed_cfg, trainer_cfg.get("ddp_backend")))  # CPU: gloo
    elif world_size() > 1 and not torch.cuda.is_available() and not kwargs.get("use_cpu"):
        # Without use_cpu, accelerate does not join CPU processes into one job: each would train alone.
        log.info("multi-process run without CUDA: using CPU data parallelism (trainer.use_cpu=true)")
        kwargs["use_cpu"] = True
    return TrainingArguments(**kwargs)


def load_data(cfg: DictConfig, tokenizer) -> PreferenceData:
    """The `data` group's pairs, carrying the weighting's annotator column when it names one.

    The tokenized-data cache is filled once per job: global rank 0 tokenizes (or reads the cache) first, the other
    ranks, on every node, then read its entry (`main_first`). Without a cache each rank tokenizes for itself."""
    column = cfg.weighting.get("annotator_column")
    carry = {"annotator": column} if column else None
    load = partial(load_preference_data, cfg.data, tokenizer, cfg.seed, carry=carry)
    return main_first(load) if cfg.data.get("cache", True) else load()


def choose_collator(enabled: bool, model: torch.nn.Module, pad_token_id: int, max_length: int | None = None,
                    lists: bool = False, responses_per_row: int = 2):
    """The packed collator where it is exact for `model`, else the plain one (with a one-line notice). `lists`:
    the ranked-list collators (po/data/list_collate.py; its packed row generalizes the pair row, so the same probe
    decides)."""
    plain, packed = (ListCollator, PackedListCollator) if lists else (PairCollator, PackedPairCollator)
    if not enabled:
        return plain(pad_token_id)
    ok, why = packing_support(model, max_length, responses_per_row)
    if not ok:
        log.warning("trainer.packing: falling back to one row per response (%s)", why)
        return plain(pad_token_id)
    return packed(pad_token_id)


def longest_list(data: PreferenceData) -> int:
    """The most responses one packed row holds: 2 for pairs, the longest ranked list's K for list data."""
    return max([2] + [k for report in data.reports.values() for k in report.list_sizes])


def check_lists_fit(loss: PreferenceLoss, data: PreferenceData) -> None:
    """Ranked-list data with a loss or reference that cannot take it: one line, before any model loads."""
    if not data.lists:
        return
    if needs_extras(loss):
        raise ConfigError(f"{type(loss).__name__} needs token KL or hidden states, which po computes for pairs "
                          "only; the data holds ranked lists: use a loss that needs log-probs only (e.g. loss=dpo, "
                          "loss=pl_dpo), or pair data")


@dataclass
class BuiltReference:
    """What `build_reference` made: the source (None: reference-free), and facts for the summary."""

    source: ReferenceSource | None
    collator: Any
    facts: dict[str, Any] = field(default_factory=dict)
    models_loaded: int = 0


def build_reference(cfg: DictConfig, loss: PreferenceLoss, tokenizer, data: PreferenceData, policy: torch.nn.Module,
                    collator, args: TrainingArguments) -> BuiltReference:
    """The reference source the `reference` group names (`auto`: none for a reference-free loss, the adapter-disabled
    policy under PEFT, else a frozen copy), ZeRO-3 sharding of a frozen copy included. `reference=cached` adds the
    pair keys to the collator and loads a reference model only on a cache miss."""
    strategy = resolve_strategy(cfg.reference.strategy, loss.needs_reference, cfg.peft.get("method", "none"))
    if strategy == "none" or not loss.needs_reference:
        return BuiltReference(None, collator, {"reference": "none"})
    if strategy == "adapter":
        return BuiltReference(AdapterReference(), collator, {"reference": strategy})
    if strategy == "model":
        model = policy_models.load_reference(cfg.model, tokenizer, cfg.seed, policy).to(args.device)
        ds_config = args.hf_deepspeed_config.config if args.deepspeed else None  # ZeRO-3: sharded like the policy
        source = FrozenModelReference(prepare_reference(model, ds_config, args.world_size))
        return BuiltReference(source, collator, {"reference": strategy}, models_loaded=1)
    keyed = KeyedCollator(collator)
    source, cache = open_reference_cache(cfg, tokenizer, data, keyed, args.device, args.per_device_eval_batch_size)
    return BuiltReference(source, keyed, {"reference": strategy, "reference_cache": cache},
                          models_loaded=int(not cache["hit"]))


def open_reference_cache(cfg: DictConfig, tokenizer, data: PreferenceData, collator: KeyedCollator | None,
                         device, batch_size: int, must_write: bool = False):
    """`reference=cached`: the verified cache for this model, tokenizer, data and settings, filled on a miss (the
    only case that loads a reference model). `collator` None: the layout po-train would choose (po-cache-ref)."""
    datasets = [data.train, data.eval]
    key, _ = cache_key(cfg.model, cfg.data, cfg.seed, tokenizer, datasets)

    def fill() -> dict[str, Any]:
        with without_zero3_init():  # one process computes the values alone: a whole model, not ZeRO-3 shards
            model = policy_models.load_reference(cfg.model, tokenizer, cfg.seed, None).to(device)
        keyed = collator or KeyedCollator(choose_collator(cfg.trainer.packing, model, tokenizer.pad_token_id,
                                                          cfg.data.max_length, data.lists, longest_list(data)))
        return compute_table(model, datasets, keyed, key, batch_size, device, cfg.trainer.logps_chunk_size)

    # Filled by global rank 0 on a miss while the other ranks wait, then read by them: one fill per job.
    return main_first(partial(open_cache, cache_path(cache_dir(cfg.reference), key), key, fill, must_write))


def evaluation_reference(cfg: DictConfig, tokenizer, policy: torch.nn.Module, args: TrainingArguments):
    """The starting model for a reference-free run's held-out DPO figures: the adapter-disabled policy under PEFT
    (no copy), else one frozen copy (sharded like the policy under ZeRO-3). Returns (source, models loaded)."""
    if cfg.peft.get("method", "none") != "none":
        return AdapterReference(), 0
    model = policy_models.load_reference(cfg.model, tokenizer, cfg.seed, policy).to(args.device)
    ds_config = args.hf_deepspeed_config.config if args.deepspeed else None
    return FrozenModelReference(prepare_reference(model, ds_config, args.world_size)), 1


def sampling_reference(cfg: DictConfig, trainer: PreferenceTrainer, tokenizer) -> tuple[ReferenceSource, bool]:
    """The starting model to sample from after training (the judged eval, `eval.generate`): the run's live reference,
    else a reference-free run's evaluation copy (`evaluation_reference`), else one frozen copy loaded now. Returns
    (source, whether a copy was loaded)."""
    reference = trainer.reference
    if reference is None or not reference.live:
        reference = trainer.eval_reference
    if reference is not None:
        return reference, False
    model = policy_models.load_reference(cfg.model, tokenizer, cfg.seed, None).to(trainer.args.device)
    return FrozenModelReference(model), True


def build_trainer(cfg: DictConfig, run_dir: Path, *, data: PreferenceData | None = None,
                  loss: PreferenceLoss | None = None, tokenizer=None,
                  args: TrainingArguments | None = None) -> tuple[PreferenceTrainer, Any, dict]:
    """Everything up to `trainer.train()`; returns the trainer, the tokenizer and facts for the summary.

    `loss` (from `validate`), `tokenizer`, `data` and `args` are built here when not given."""
    paths = RunPaths(run_dir)
    loss = validate(cfg) if loss is None else loss
    args = training_arguments(cfg.trainer, cfg.deepspeed, cfg.seed, paths.checkpoints) if args is None else args
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model) if tokenizer is None else tokenizer
    data = load_data(cfg, tokenizer) if data is None else data
    check_trains(cfg.trainer, len(data.train), world_size())  # 0 optimizer steps is an error, before any model
    check_lists_fit(loss, data)
    if data.annotator_ids is not None and cfg.weighting.get("annotator_column"):
        loss.bind_annotators(list(data.annotator_ids))
        if is_main_process():
            write_json_atomic(paths.annotators, data.annotator_ids)
    if world_size() > 1:  # the tiny model's warm-up: rank 0 fills its cache once, the other ranks then read it
        run_on_main(partial(policy_models.fill_warmup_cache, cfg.model, tokenizer, cfg.seed))
    policy = policy_models.load_policy(cfg.model, tokenizer, cfg.seed, **quantization_kwargs(cfg.peft))
    policy = apply_peft(policy, cfg.peft, checkpointing=bool(cfg.model.get("gradient_checkpointing")))
    # Losses that need extras (token KL, hidden states: SparsePO) read per-row model outputs: they use plain rows.
    packing = cfg.trainer.packing and not needs_extras(loss)
    collator = choose_collator(packing, policy, tokenizer.pad_token_id, cfg.data.max_length, data.lists,
                               longest_list(data))
    reference = build_reference(cfg, loss, tokenizer, data, policy, collator, args)
    trainer = PreferenceTrainer(
        model=policy, args=args, train_dataset=data.train, eval_dataset=data.eval,
        data_collator=reference.collator, processing_class=tokenizer,
        callbacks=[MetricsJsonl(paths.metrics)], loss_module=loss, reference=reference.source,
        logps_chunk_size=cfg.trainer.logps_chunk_size, list_pairs=cfg.data.get("list_pairs") or "all",
    )
    eval_models = 0
    if reference.source is None and data.eval is not None and cfg.eval.get("reference_free_dpo", False):
        trainer.eval_reference, eval_models = evaluation_reference(cfg, tokenizer, policy, args)
    trainer.reliability = ReliabilitySettings(cfg.trainer.max_bad_steps, cfg.trainer.checkpoint_checksums,
                                              nonfinite_report=paths.nonfinite_steps,
                                              preempted_marker=paths.preempted)
    facts = {
        **reference.facts,
        "models_loaded": 1 + reference.models_loaded + eval_models,
        "policy_parameters": policy_models.count_parameters(policy),
        "data": {split: report.as_dict() for split, report in data.reports.items()},
        "pairs_per_optimizer_step": args.per_device_train_batch_size * args.gradient_accumulation_steps
        * args.world_size,
    }
    log.info("reference: %s; pairs per optimizer step: %d; policy parameters: %d", facts["reference"],
             facts["pairs_per_optimizer_step"], facts["policy_parameters"])
    return trainer, tokenizer, facts
