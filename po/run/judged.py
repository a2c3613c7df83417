"""The judged evaluation of a run: sample held-out prompts from the policy and the starting model, judge both, and
report the win rate against the starting model with intervals (po.judge.stats), at the end of every run with a
judge (and at every `trainer.eval_steps` with `judge.at_eval_steps=true`).

The starting model's half (its samples and, for pointwise judges, their scores) is read from po.judge.cache when a
run with the same starting model, tokenizer, prompts, sampling settings and judge stored it (a sweep samples and
judges the starting model once; `po-cache-judge` fills it ahead). The KL to the starting model is estimated on the
policy's samples (mean over samples of log pi(y|x) - log pi_0(y|x)), so the starting model runs in every run: the
live reference when there is one, else one frozen copy loaded for evaluation, once per run. The judge model is
loaded once per run too; the policy is never copied (reward models are separate models, and the pairwise judge
reads only text).

Every judged sample (prompt, both responses, scores, lengths, preference, KL estimate) is written to the run
directory (RunPaths.judged_samples), atomically; figures land under `eval_judge/*`.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from po.atomic import WriteError, write_text_atomic
from po.fingerprint import json_sha256, sha256_file, tokenizer_fingerprint
from po.judge import cache as judge_cache
from po.judge.judges import Judge, load_judge, preferences, resolve_function
from po.judge.sampling import SamplingSettings, sample_responses, sequence_logps
from po.judge.stats import summarize
from po.run.build import sampling_reference
from po.run.distributed import is_main_process, share_from_main
from po.run.paths import RunPaths
from po.run.refcache import model_fingerprint
from po.step.logprobs import unwrap
from po.step.reference import ReferenceSource

log = logging.getLogger(__name__)


def judging(judge_cfg: DictConfig | None) -> bool:
    return judge_cfg is not None and judge_cfg.get("kind", "none") != "none"


def sampling_settings(judge_cfg: DictConfig, seed: int) -> SamplingSettings:
    return SamplingSettings(judge_cfg.samples_per_prompt, judge_cfg.max_new_tokens, float(judge_cfg.temperature),
                            float(judge_cfg.top_p), judge_cfg.batch_size, seed)


def judge_identity(judge_cfg: DictConfig) -> dict[str, Any]:
    """What decides the judge's scores: the function's path and its source file, or the judge model's files."""
    values = OmegaConf.to_container(judge_cfg, resolve=True)
    if judge_cfg.kind == "function":
        fn = resolve_function(judge_cfg.function)
        try:
            source = inspect.getsourcefile(fn)
        except TypeError:  # a builtin or C function: its name is all there is
            source = None
        return {"kind": "function", "function": judge_cfg.function,
                "source": sha256_file(source) if source and Path(source).is_file() else None}
    model = OmegaConf.create({"kind": "hf", "name_or_path": judge_cfg.name_or_path, "revision": judge_cfg.revision,
                              "dtype": judge_cfg.dtype})
    keep = ("kind", "max_length", "question", "answers")
    return {"model": model_fingerprint(model, 0), **{k: values.get(k) for k in keep}}


def held_out_prompts(eval_dataset, num_prompts: int) -> list[list[int]]:
    """The token ids of the first `num_prompts` held-out prompts."""
    return [list(eval_dataset[i]["prompt_ids"]) for i in range(min(num_prompts, len(eval_dataset)))]


def start_key(model_cfg: DictConfig, seed: int, tokenizer, prompts: list[list[int]], settings: SamplingSettings,
              judge_cfg: DictConfig) -> str:
    parts = {"model": model_fingerprint(model_cfg, seed), "tokenizer": tokenizer_fingerprint(tokenizer),
             "prompts": json_sha256(prompts), "sampling": settings.as_dict(), "judge": judge_identity(judge_cfg)}
    return json_sha256(parts)[:32]


def _decode(tokenizer, ids: list[int]) -> str:
    """Text for the judge: special tokens (the chat template's role markers) dropped."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _judge_texts(tokenizer, prompts: list[list[int]], responses: list[list[list[int]]]) -> tuple[list[str], list[str]]:
    """What the judge reads, one entry per response (`responses[i][j]` in order, prompt by prompt): the text of its
    prompt, and its own text."""
    prompt_texts = [_decode(tokenizer, p) for p in prompts]
    return ([prompt_texts[i] for i, rs in enumerate(responses) for _ in rs],
            [_decode(tokenizer, r) for rs in responses for r in rs])


def starting_entry(model_cfg: DictConfig, judge_cfg: DictConfig, seed: int, tokenizer, prompts: list[list[int]],
                   starting: ReferenceSource, policy, judge: Judge,
                   must_write: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The starting model's samples (and pointwise scores) for these prompts: from the cache, or sampled, judged
    and stored. Every rank gets the same entry (rank 0 decides hit or miss)."""
    settings = sampling_settings(judge_cfg, seed)
    key = start_key(model_cfg, seed, tokenizer, prompts, settings, judge_cfg)
    path = judge_cache.entry_path(judge_cache.cache_dir(judge_cfg.get("dir")), key)
    use = bool(judge_cfg.get("cache", True))
    stored = share_from_main(judge_cache.read_entry(path, key) if use and is_main_process() else None)
    if stored is not None:
        return stored, {"path": str(path), "hit": True, "written": False}

    def fill() -> dict[str, Any]:
        responses = starting.run(policy, lambda m: sample_responses(m, prompts, tokenizer, settings))
        entry: dict[str, Any] = {"responses": responses, "scores": None}
        if judge.pointwise:
            flat = judge.score(*_judge_texts(tokenizer, prompts, responses))
            n = settings.samples_per_prompt
            entry["scores"] = [flat[i * n:(i + 1) * n] for i in range(len(prompts))]
        return entry

    entry = {"format": judge_cache.CACHE_FORMAT, "key": key, **fill()}
    facts = {"path": str(path), "hit": False, "written": False}
    if use and is_main_process():
        try:
            facts["written"] = judge_cache.write_entry(path, entry)
        except WriteError as exc:
            if must_write:
                raise
            log.warning("judge cache not written: %s (%s); this run uses the values from memory (set judge.dir to a "
                        "writable folder)", exc.path, exc.reason)
    return entry, facts


def _earlier_records(path: Path) -> list[dict[str, Any]]:
    """The judged samples a previous start of this run wrote (a fresh start has removed the file)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            records.append(row)
    return records


class JudgedEval:
    """One run's judged evaluation: the judge, the starting model and the starting entry, loaded once and reused
    at every evaluation of the run."""

    def __init__(self, cfg: DictConfig, trainer, tokenizer, paths: RunPaths):
        self.cfg, self.trainer, self.tokenizer, self.paths = cfg, trainer, tokenizer, paths
        self.judge: Judge | None = None
        self.starting: ReferenceSource | None = None
        self.entry: dict[str, Any] | None = None
        self.facts: dict[str, Any] = {"start_sampled": 0, "evaluations": 0, "seconds": 0.0}
        self.records = _earlier_records(paths.judged_samples)  # a resumed run keeps its earlier judged steps
        self.last: tuple[int, dict[str, float]] | None = None  # (step, figures): a step is judged once
        self.prompts = held_out_prompts(trainer.eval_dataset, cfg.judge.num_prompts)

    def _prepare(self) -> None:
        device = self.trainer.args.device
        if self.judge is None:
            self.judge = load_judge(self.cfg.judge, device)
            self.facts["judge"] = self.judge.name
        if self.starting is None:
            self.starting, loaded = sampling_reference(self.cfg, self.trainer, self.tokenizer)
            if loaded:
                self.facts["starting_model_loaded"] = True
        if self.entry is None:
            self.entry, cache_facts = starting_entry(self.cfg.model, self.cfg.judge, self.cfg.seed, self.tokenizer,
                                                     self.prompts, self.starting, self._policy(), self.judge)
            self.facts["start_cache"] = cache_facts
            self.facts["start_sampled"] += int(not cache_facts["hit"])

    def _policy(self):
        return unwrap(self.trainer.model)

    def __call__(self) -> dict[str, float]:
        """Sample, judge and summarize now; returns `judge/*` figures (the trainer adds the `eval_` prefix)."""
        step = self.trainer.state.global_step
        if self.last is not None and self.last[0] == step:  # the final evaluation at a step eval_steps judged
            return dict(self.last[1])
        began = time.perf_counter()
        self._prepare()
        policy, tok, settings = self._policy(), self.tokenizer, sampling_settings(self.cfg.judge, self.cfg.seed)
        mine = sample_responses(policy, self.prompts, tok, settings)
        theirs = self.entry["responses"]
        logp_policy = sequence_logps(policy, self.prompts, mine, settings.batch_size)
        logp_start = self.starting.run(policy, lambda m: sequence_logps(m, self.prompts, mine, settings.batch_size))
        flat_p, flat_mine = _judge_texts(tok, self.prompts, mine)
        _, flat_theirs = _judge_texts(tok, self.prompts, theirs)
        start_scores = None if self.entry["scores"] is None else [s for row in self.entry["scores"] for s in row]
        prefs, scores, theirs_scores = preferences(self.judge, flat_p, flat_mine, flat_theirs, start_scores)
        n, count = settings.samples_per_prompt, len(self.prompts)

        def grid(flat):
            return np.asarray(flat, dtype=float).reshape(count, n)

        len_mine = [len(r) for rs in mine for r in rs]
        len_theirs = [len(r) for rs in theirs for r in rs]
        kl = [a - b for ra, rb in zip(logp_policy, logp_start) for a, b in zip(ra, rb)]
        figures = summarize(grid(prefs), grid(len_mine) - grid(len_theirs), grid(scores), grid(len_mine), grid(kl),
                            self.cfg.judge.bootstrap_samples, self.cfg.seed)
        figures["start_length_mean"] = float(np.mean(len_theirs))
        self.records = [r for r in self.records if r.get("step") != step]  # a step judged again replaces its rows
        for k, (i, j) in enumerate((i, j) for i in range(count) for j in range(n)):
            self.records.append({
                "step": step, "prompt_index": i, "sample": j, "prompt": flat_p[k], "policy": flat_mine[k],
                "start": flat_theirs[k], "policy_score": scores[k],
                "start_score": None if theirs_scores is None else theirs_scores[k], "preference": prefs[k],
                "policy_length": len_mine[k], "start_length": len_theirs[k], "kl_estimate": kl[k]})
        if is_main_process():
            write_text_atomic(self.paths.judged_samples, "".join(json.dumps(r) + "\n" for r in self.records))
        self.facts["evaluations"] += 1
        self.facts["seconds"] = round(self.facts["seconds"] + time.perf_counter() - began, 3)
        log.info("judged eval at step %d: win rate %.3f [%.3f, %.3f], LC %.3f", step, figures["win_rate"],
                 figures["win_rate_ci_low"], figures["win_rate_ci_high"], figures["win_rate_lc"])
        self.last = (step, {f"judge/{k}": v for k, v in figures.items()})
        return dict(self.last[1])
