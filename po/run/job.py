"""One training run from a composed config: validate, claim the run directory, load, train, evaluate, save, summarize.

`po.cli.train` calls `train(cfg, run_dir, job_files)` with Hydra's run directory; tests call `train(cfg, run_dir)`.
The order is what docs/reliability.md promises: nothing is written before the run directory is claimed (a finished
run is refused first, then the lock is taken); a resume from a checkpoint at `max_steps` trains no step; every file
written at the end is written atomically, and `summary.json`, the mark of a finished run, is written last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments, set_seed

from po.data.annotators import configure_weighting, use_annotator_column
from po.atomic import write_json_atomic, write_text_atomic
from po.trainer.metrics import MetricsJsonl
from po.config import build_loss, trainer_kwargs, validate
from po.data.load import load_preference_data
from po.run.distributed import deepspeed_cpu_state, is_main_process, world_size
from po.step.extras import needs_extras
from po.run.jobfiles import HydraJobFiles, close_job_log, write_job_files
from po.models.policy import count_parameters, load_policy, load_reference, load_tokenizer
from po.step.layouts import choose_collator
from po.models.peft import apply_peft, export_model, quantization_kwargs
from po.run.provenance import git_commit, package_versions
from po.run.refcache import KeyedCollator, reference_from_cache
from po.step.reference import AdapterReference, FrozenModelReference, resolve_strategy
from po.trainer.reliable import ReliabilitySettings
from po.run.rundir import RunStart, eval_before_from_metrics, prepare_run_dir, record_fingerprint
from po.run.lock import claim_run_dir, refuse_finished
from po.trainer.preference_trainer import PreferenceTrainer
from po.run.values import check_trains
from po.models.zero import evaluate_at_train_begin, prepare_reference

log = logging.getLogger(__name__)


def training_arguments(cfg: DictConfig, run_dir: Path) -> TrainingArguments:
    kwargs = trainer_kwargs(cfg)
    kwargs.update(output_dir=str(run_dir / "checkpoints"), remove_unused_columns=False, seed=cfg.seed,
                  data_seed=cfg.seed)
    if cfg.deepspeed.get("config"):
        kwargs["deepspeed"] = OmegaConf.to_container(cfg.deepspeed.config, resolve=True)
        kwargs.update(deepspeed_cpu_state(cfg))  # DeepSpeed on a CPU machine: gloo (DS_ACCELERATOR=cpu)
    elif world_size() > 1 and not torch.cuda.is_available() and not kwargs.get("use_cpu"):
        # Without use_cpu, accelerate does not join CPU processes into one job: each would train alone.
        log.info("multi-process run without CUDA: using CPU data parallelism (trainer.use_cpu=true)")
        kwargs["use_cpu"] = True
    return TrainingArguments(**kwargs)


def build_trainer(cfg: DictConfig, run_dir: Path) -> tuple[PreferenceTrainer, Any, dict]:
    """Everything up to `trainer.train()`; returns the trainer, the tokenizer and facts for the summary."""
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    use_annotator_column(cfg)
    data = load_preference_data(cfg.data, tokenizer, cfg.seed)
    check_trains(cfg.trainer, len(data.train), world_size())  # 0 optimizer steps is an error, before any model
    configure_weighting(cfg, data.annotator_ids, run_dir)
    loss = build_loss(cfg)
    strategy = resolve_strategy(cfg.reference.strategy, loss.needs_reference, cfg.peft.get("method", "none"))
    args = training_arguments(cfg, run_dir)
    policy = apply_peft(load_policy(cfg.model, tokenizer, cfg.seed, **quantization_kwargs(cfg)), cfg)
    # Losses that need extras (token KL, hidden states: SparsePO) read per-row model outputs: they use plain rows.
    packing = cfg.trainer.get("packing", False) and not needs_extras(loss)
    collator = choose_collator(packing, policy, tokenizer.pad_token_id, cfg.data.max_length)
    reference, cache_facts = None, None
    if strategy == "cached" and loss.needs_reference:  # po.run.refcache: stored values by pair; loads a reference model only on a cache miss
        collator = KeyedCollator(collator)
        reference, cache_facts = reference_from_cache(cfg, tokenizer, data, collator, args.device,
                                                      args.per_device_eval_batch_size, cfg.trainer.logps_chunk_size)
    if strategy == "model":
        reference = FrozenModelReference(load_reference(cfg.model, tokenizer, cfg.seed, policy).to(args.device))
    elif strategy == "adapter":
        reference = AdapterReference()
    trainer = PreferenceTrainer(
        model=policy, args=args, train_dataset=data.train, eval_dataset=data.eval,
        data_collator=collator, processing_class=tokenizer,
        callbacks=[MetricsJsonl(run_dir / "metrics.jsonl")], loss_module=loss, reference=reference,
        logps_chunk_size=cfg.trainer.logps_chunk_size,
    )
    trainer.reliability = ReliabilitySettings(cfg.trainer.get("max_bad_steps", 10),
                                              cfg.trainer.get("checkpoint_checksums", True))
    if isinstance(reference, FrozenModelReference):  # ZeRO-3: shard the reference like the policy
        trainer.reference = FrozenModelReference(prepare_reference(reference.model, trainer))
    facts = {
        "reference": strategy,
        "models_loaded": 1 + (strategy == "model"),
        "policy_parameters": count_parameters(policy),
        "data": {split: report.as_dict() for split, report in data.reports.items()},
        "pairs_per_optimizer_step": args.per_device_train_batch_size * args.gradient_accumulation_steps
        * args.world_size,
    }
    if cache_facts is not None:
        facts["reference_cache"] = cache_facts
        facts["models_loaded"] += not cache_facts["hit"]
    log.info("reference: %s; pairs per optimizer step: %d; policy parameters: %d", strategy,
             facts["pairs_per_optimizer_step"], facts["policy_parameters"])
    return trainer, tokenizer, facts


def train(cfg: DictConfig, run_dir: Path, job_files: HydraJobFiles | None = None) -> dict[str, Any]:
    """Run the configured job into `run_dir`; return (and write) the summary.

    `job_files`: Hydra's `.hydra/` files and job log, written once the run directory is claimed (`po.run.jobfiles`).
    """
    use_annotator_column(cfg)
    validate(cfg)
    run_dir = Path(run_dir)
    overwrite = cfg.trainer.get("overwrite", False) is True
    refuse_finished(run_dir, overwrite)  # every rank, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    training_arguments(cfg, run_dir)  # starts the process group of a multi-process launch (rank 0 decides below)
    with claim_run_dir(run_dir, overwrite, lambda: prepare_run_dir(cfg, run_dir)) as start:
        job_log = None
        if job_files is not None and is_main_process():
            job_log = write_job_files(run_dir, job_files, fresh_log=start.replaced)
        try:
            return _run(cfg, run_dir, start)
        finally:
            close_job_log(job_log)


def _run(cfg: DictConfig, run_dir: Path, start: RunStart) -> dict[str, Any]:
    """Load, train (from `start.resume`), evaluate, export and summarize, in the claimed `run_dir`."""
    if is_main_process():
        write_text_atomic(run_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    trainer, tokenizer, facts = build_trainer(cfg, run_dir)
    trainer.reliability = replace(trainer.reliability, run_id=start.run_id)
    if start.record_fingerprint and is_main_process():
        record_fingerprint(run_dir, cfg.data)  # after loading: hub datasets are in the local cache now
    has_eval = trainer.eval_dataset is not None
    before = {}
    if start.resume is not None:  # evaluated at the first start: metrics.jsonl keeps it
        before = eval_before_from_metrics(run_dir)
    elif has_eval and cfg.eval.before_training and trainer.is_deepspeed_enabled:
        before = evaluate_at_train_begin(trainer)  # filled once DeepSpeed's training engine exists
    elif has_eval and cfg.eval.before_training:
        before = trainer.evaluate()
    began = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=start.resume)  # no step when the checkpoint is at max_steps
    wall = time.perf_counter() - began
    tokens = trainer.train_tokens()  # all ranks, before any rank-0-only write can fail
    after = trainer.evaluate() if has_eval else {}
    if has_eval and cfg.eval.generate:
        after.update(_generation(cfg, trainer, tokenizer, run_dir))
    facts.update(export_model(trainer, cfg, run_dir / "model", tokenizer))  # written whole or not at all
    summary = {
        "steps": trainer.state.global_step,
        "wall_time_s": round(wall, 2),
        "pairs_per_second": result.metrics.get("train_samples_per_second"),
        "tokens_per_second": tokens / max(wall, 1e-9),
        "final_train_metrics": _last_train_log(trainer.state.log_history),
        "eval_before": before,
        "eval": after,
        "resumed_from": start.resume,
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "world_size": trainer.args.world_size,
        "git_commit": git_commit(),
        "versions": package_versions(),
        **facts,
    }
    if trainer.is_world_process_zero():
        write_json_atomic(run_dir / "summary.json", summary)  # last: from now on the run is finished
        print(format_summary(summary, run_dir))
    return summary


def _generation(cfg: DictConfig, trainer: PreferenceTrainer, tokenizer, run_dir: Path) -> dict[str, Any]:
    """Sample on held-out prompts (main process); a reference-free run loads a reference for this only."""
    from po.trainer.evaluation import generation_eval

    if trainer.args.world_size > 1:
        log.warning("eval.generate runs in single-process jobs only; skipped (world size %d)", trainer.args.world_size)
        return {}
    reference = trainer.reference
    if reference is None:
        reference = FrozenModelReference(load_reference(cfg.model, tokenizer, cfg.seed, trainer.model)
                                         .to(trainer.args.device))
    eval_set = trainer.eval_dataset
    prompts = [eval_set[i]["prompt_ids"] for i in range(min(cfg.eval.num_prompts, len(eval_set)))]
    result = generation_eval(trainer.model, reference, tokenizer, prompts, run_dir / "generations.jsonl",
                             cfg.eval.max_new_tokens, cfg.eval.temperature, seed=cfg.seed)
    return {f"eval_{k}": v for k, v in result.items()}


def _last_train_log(history: list[dict]) -> dict:
    logs = [h for h in history if "loss" in h]
    return logs[-1] if logs else {}


def format_summary(summary: dict, run_dir: Path) -> str:
    acc_before = summary["eval_before"].get("eval_rewards/accuracies")
    acc_after = summary["eval"].get("eval_rewards/accuracies")
    lines = [
        f"po-train finished: {summary['steps']} steps in {summary['wall_time_s']:.1f} s "
        f"({summary['pairs_per_second'] or 0:.1f} pairs/s, {summary['tokens_per_second']:.0f} tokens/s)",
    ]
    if acc_after is not None:
        before = f"{acc_before:.3f} -> " if acc_before is not None else ""
        lines.append(f"held-out reward accuracy: {before}{acc_after:.3f}")
    lines.append(f"run directory: {run_dir} (summary.json, metrics.jsonl, model/)")
    return "\n".join(lines)

