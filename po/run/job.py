"""One training run from a composed config, top to bottom: validate, claim the run directory, build, train, evaluate,
export, summarize.

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

from omegaconf import DictConfig, OmegaConf

from po.atomic import write_json_atomic, write_text_atomic
from po.run.build import build_trainer, sampling_reference, training_arguments
from po.run.distributed import is_main_process
from po.run.export import export_model
from po.run.judged import JudgedEval, held_out_prompts, judging
from po.run.jobfiles import HydraJobFiles, close_job_log, write_job_files
from po.run.lock import claim_run_dir, refuse_finished
from po.run.paths import RunPaths
from po.run.provenance import git_commit, package_versions
from po.run.rundir import RunStart, eval_before_from_metrics, prepare_run_dir, record_fingerprint
from po.run.validate import validate
from po.trainer.evaluation import evaluate_at_train_begin, generation_eval
from po.trainer.preference_trainer import PreferenceTrainer

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path, job_files: HydraJobFiles | None = None) -> dict[str, Any]:
    """Run the configured job into `run_dir`; return (and write) the summary.

    `job_files`: Hydra's `.hydra/` files and job log, written once the run directory is claimed (`po.run.jobfiles`).
    """
    loss = validate(cfg)  # the loss is built here, once
    paths = RunPaths(run_dir)
    overwrite = cfg.trainer.overwrite is True
    refuse_finished(paths.root, overwrite)  # every rank, before anything is written
    paths.root.mkdir(parents=True, exist_ok=True)
    args = training_arguments(cfg.trainer, cfg.deepspeed, cfg.seed, paths.checkpoints)  # starts the process group
    with claim_run_dir(paths.root, overwrite, lambda: prepare_run_dir(cfg.trainer, cfg.data, paths)) as start:
        job_log = None
        if job_files is not None and is_main_process():
            job_log = write_job_files(paths.root, job_files, fresh_log=start.replaced)
        try:
            return _run(cfg, paths, start, loss, args)
        finally:
            close_job_log(job_log)


def _run(cfg: DictConfig, paths: RunPaths, start: RunStart, loss, args) -> dict[str, Any]:
    """Load, train (from `start.resume`), evaluate, export and summarize, in the claimed run directory."""
    job_began = time.perf_counter()
    if is_main_process():
        write_text_atomic(paths.resolved_config, OmegaConf.to_yaml(cfg, resolve=True))
    trainer, tokenizer, facts = build_trainer(cfg, paths.root, loss=loss, args=args)
    trainer.reliability = replace(trainer.reliability, run_id=start.run_id)
    if start.record_fingerprint and is_main_process():
        record_fingerprint(paths, cfg.data)  # after loading: hub datasets are in the local cache now
    has_eval = trainer.eval_dataset is not None
    judged = _judged_eval(cfg, trainer, tokenizer, paths, has_eval)
    before = {}
    if start.resume is not None:  # evaluated at the first start: metrics.jsonl keeps it
        before = eval_before_from_metrics(paths)
    elif has_eval and cfg.eval.before_training and trainer.is_deepspeed_enabled:
        before = evaluate_at_train_begin(trainer)  # filled once DeepSpeed's training engine exists
    elif has_eval and cfg.eval.before_training:
        before = trainer.evaluate()
    began = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=start.resume)  # no step when the checkpoint is at max_steps
    wall = time.perf_counter() - began
    tokens = trainer.train_tokens()  # all ranks, before any rank-0-only write can fail
    after = trainer.evaluate() if has_eval else {}
    if judged is not None and not cfg.judge.at_eval_steps:  # at_eval_steps: the evaluation above judged already
        after.update({f"eval_{k}": v for k, v in judged().items()})
    if has_eval and cfg.eval.generate:
        after.update(_generation(cfg, trainer, tokenizer, paths))
    merge = bool(cfg.model.get("merge_lora_on_save"))
    facts.update(export_model(trainer, merge, paths.model, tokenizer))  # written whole or not at all
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
    if judged is not None:
        summary["judge"] = judged.facts
    summary["job_time_s"] = round(time.perf_counter() - job_began, 2)  # build to summary (imports excluded)
    if trainer.is_world_process_zero():
        write_json_atomic(paths.summary, summary)  # last: from now on the run is finished
        print(format_summary(summary, paths.root))
    return summary


def _judged_eval(cfg: DictConfig, trainer: PreferenceTrainer, tokenizer, paths: RunPaths,
                 has_eval: bool) -> JudgedEval | None:
    """The run's judged evaluation (None without a judge); with judge.at_eval_steps it joins every evaluation."""
    if not judging(cfg.get("judge")):
        return None
    if not has_eval:
        log.warning("judge=%s needs held-out prompts, and this run has no held-out split; judged eval skipped "
                    "(set data.eval_fraction > 0 or data.eval_path)", cfg.judge.kind)
        return None
    judged = JudgedEval(cfg, trainer, tokenizer, paths)
    if cfg.judge.at_eval_steps:
        trainer.eval_extras.append(judged)
    return judged


def _generation(cfg: DictConfig, trainer: PreferenceTrainer, tokenizer, paths: RunPaths) -> dict[str, Any]:
    """Sample on held-out prompts (main process); a run without a live reference loads one for this only."""
    if trainer.args.world_size > 1:
        log.warning("eval.generate runs in single-process jobs only; skipped (world size %d)", trainer.args.world_size)
        return {}
    reference, _ = sampling_reference(cfg, trainer, tokenizer)
    prompts = held_out_prompts(trainer.eval_dataset, cfg.eval.num_prompts)
    result = generation_eval(trainer.model, reference, tokenizer, prompts, paths.generations,
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
    win = summary["eval"].get("eval_judge/win_rate")
    if win is not None:
        e = summary["eval"]
        lines.append(f"judged win rate vs the starting model: {win:.3f} [{e['eval_judge/win_rate_ci_low']:.3f}, "
                     f"{e['eval_judge/win_rate_ci_high']:.3f}], length-controlled {e['eval_judge/win_rate_lc']:.3f} "
                     f"[{e['eval_judge/win_rate_lc_ci_low']:.3f}, {e['eval_judge/win_rate_lc_ci_high']:.3f}] "
                     f"({RunPaths(run_dir).judged_samples.name})")
        seconds = summary["judge"]["seconds"]
        lines.append(f"judged eval: {seconds:.1f} s, {100 * seconds / max(summary['job_time_s'], 1e-9):.1f}% of the "
                     f"job's {summary['job_time_s']:.1f} s (build, train, evaluate, export)")
    lines.append(f"run directory: {run_dir} (summary.json, metrics.jsonl, model/)")
    return "\n".join(lines)

