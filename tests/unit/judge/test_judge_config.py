"""Bad judge configs fail in `validate(cfg)`, before any model loads, with one line naming the key."""

import subprocess
import sys

import pytest

from po.errors import ConfigError
from po.run.validate import validate
from tests.helpers.config import JUDGE_CONFIGS
from tests.helpers.runs import compose_cfg

RM, LM = JUDGE_CONFIGS / "reward_model", JUDGE_CONFIGS / "causal_lm"


@pytest.mark.parametrize("overrides", [
    ["judge=function", "judge.function=po.judge.toy.score"],
    ["judge=reward_model", f"judge.name_or_path={RM}"],
    ["judge=pairwise", f"judge.name_or_path={LM}"],
    ["judge=function", "judge.function=po.judge.toy.length", "deepspeed=zero2"],
])
def test_good_judge_configs_validate(overrides):
    validate(compose_cfg(overrides))


@pytest.mark.parametrize("overrides,needle", [
    (["judge=reward_model"], "missing required value(s): judge.name_or_path"),
    (["judge=reward_model", "judge.name_or_path=/no/such/model"], "judge.name_or_path=/no/such/model: no such local"),
    (["judge=reward_model", f"judge.name_or_path={LM}"], "needs a sequence-classification reward model"),
    (["judge=pairwise", f"judge.name_or_path={RM}"], "judge=pairwise needs a causal LM"),
    (["judge=pairwise", f"judge.name_or_path={LM}", "judge.question='Q {x}'"], "judge.question"),
    (["judge=pairwise", f"judge.name_or_path={LM}", "judge.answers=[A,A]"], "judge.answers"),
    (["judge=function", "judge.function=nosuchpkg.score"], "judge.function=nosuchpkg.score: cannot import"),
    (["judge=function", "judge.function=po.judge.toy.nothing"], "po.judge.toy has no nothing"),
    (["judge=function", "judge.function=po.judge.toy.SUBJECTS"], "not a function"),
    (["judge=function", "judge.function=score"], "dotted path to a function"),
    (["judge=function", "judge.function=po.judge.toy.score", "deepspeed=zero3"], "not supported under deepspeed=zero3"),
    (["judge=function", "judge.function=po.judge.toy.score", "judge.top_p=0"], "judge.top_p"),
    (["judge=function", "judge.function=po.judge.toy.score", "judge.num_prompts=0"], "judge.num_prompts"),
    (["judge=function", "judge.function=po.judge.toy.score", "judge.kind=oracle"], "judge.kind"),
])
def test_bad_judge_config_is_one_config_error(overrides, needle):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_judge_fails_at_start_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "po.cli", "judge=reward_model", f"judge.name_or_path={LM}",
                           f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("po-train: error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "sequence-classification" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "model").exists()
