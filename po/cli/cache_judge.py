"""`po-cache-judge` (= `python -m po.cli.cache_judge`): sample and judge the starting model ahead of a sweep.

Takes the same overrides as `po-train` (a judge must be chosen); the runs that later judge with the same starting
model, tokenizer, held-out prompts, sampling settings and judge read the starting model's samples and scores from
the cache instead of sampling them (po/judge/cache.py). The summary of each run counts it (`judge.start_sampled`).

Examples:
    po-cache-judge judge=function judge.function=po.judge.toy.score
    po-cache-judge judge=reward_model judge.name_or_path=Skywork/Skywork-Reward-V2-Qwen3-0.6B judge.dir=/shared/judge
    po-train -m judge=reward_model judge.name_or_path=... judge.dir=/shared/judge loss=dpo,ipo loss.beta=0.05,0.1

An entry already there is verified by its checksum; a damaged one is recomputed and replaced. A file that cannot be
written is one `po-cache-judge: error:` line naming it.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from po.cli.common import fill_and_report, seeded_inputs
from po.config import conf_dir
from po.errors import ConfigError
from po.judge.judges import load_judge
from po.models import policy as policy_models
from po.run.judged import held_out_prompts, judging, starting_entry
from po.run.validate import validate
from po.step.reference import FrozenModelReference

log = logging.getLogger("po")


def fill_judge_cache(cfg: DictConfig) -> dict[str, Any]:
    """Sample and judge the starting model on the held-out prompts (on a miss) and store them; returns the facts."""
    validate(cfg)
    if not judging(cfg.get("judge")):
        raise ConfigError("po-cache-judge fills the judge cache: choose a judge, e.g. judge=function "
                          "judge.function=po.judge.toy.score")
    if not cfg.judge.get("cache", True):
        raise ConfigError("judge.cache=false: po-cache-judge has nothing to store; leave judge.cache=true")
    tokenizer, data, device = seeded_inputs(cfg)
    if data.eval is None or len(data.eval) == 0:
        raise ConfigError("the judge samples held-out prompts, and this data has no held-out split; set "
                          "data.eval_fraction > 0 or data.eval_path")
    prompts = held_out_prompts(data.eval, cfg.judge.num_prompts)
    judge = load_judge(cfg.judge, device)
    model = policy_models.load_reference(cfg.model, tokenizer, cfg.seed, None).to(device)
    _, facts = starting_entry(cfg.model, cfg.judge, cfg.seed, tokenizer, prompts, FrozenModelReference(model), model,
                              judge, must_write=True)
    return {**facts, "prompts": len(prompts)}


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _main(cfg: DictConfig) -> None:
    fill_and_report("po-cache-judge", fill_judge_cache, cfg,
                    lambda facts: f"starting-model samples for {facts['prompts']} prompts")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
