"""Every option of every config group, and the values some of them need to compose."""

from __future__ import annotations

from pathlib import Path

from po.config import conf_dir


def group_options(root: Path):
    """(group, option) for every YAML in every config group, recursively (hydra/launcher included)."""
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if len(rel.parts) > 1:
            yield "/".join(rel.parts[:-1]), path.stem


JUDGE_CONFIGS = Path(__file__).with_name("judge_models")  # config.json files only: what config-time checks read
OPTIONS = list(group_options(conf_dir()))
NEEDS = {  # options that need a value or a machine the tests do not have
    ("model", "hf"): ["model.name_or_path=some/model"],
    ("data", "jsonl"): ["data.path=some.jsonl"],
    ("data", "mixture"): ["data.mixture=[{path: some.jsonl, weight: 1}]"],
    ("judge", "function"): ["judge.function=po.judge.toy.score"],
    ("judge", "reward_model"): [f"judge.name_or_path={JUDGE_CONFIGS / 'reward_model'}"],
    ("judge", "pairwise"): [f"judge.name_or_path={JUDGE_CONFIGS / 'causal_lm'}"],
}
