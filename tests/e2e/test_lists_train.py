"""Training on ranked lists end to end: `po-train data=jsonl data.path=ranked.jsonl` with a listwise loss
(loss=pl_dpo, loss=lipo), a pairwise one (loss=dpo, on the pairs each list yields) and LCPO on lists.

Run: `python -m pytest tests/e2e/test_lists_train.py -q`.
"""

from __future__ import annotations

import json
import math

import pytest

from po.data.toy import generate_lists
from tests.helpers.runs import read_metrics, run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ranked_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lists") / "ranked.jsonl"
    rows = generate_lists(60, seed=1)
    for i, row in enumerate(rows):  # K varies per row
        if i % 3 == 0:
            row["responses"], row["scores"] = row["responses"][:3], row["scores"][:3]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("overrides", [["loss=pl_dpo"], ["loss=lipo"], ["loss=dpo"], ["loss=dpo", "weighting=lcpo"],
                                       ["loss=simpo", "data.list_pairs=best"]],
                         ids=["pl_dpo", "lipo", "dpo", "dpo_lcpo", "simpo_best"])
def test_train_on_ranked_lists(tmp_path, ranked_file, overrides):
    summary = run_train(tmp_path / "run", ["data=jsonl", f"data.path={ranked_file}", "data.max_length=64",
                                           "data.eval_fraction=0.2", "trainer.max_steps=3", "trainer.logging_steps=1",
                                           "trainer.eval_strategy=steps", "trainer.eval_steps=3", *overrides],
                        fast=False)
    assert summary["data"]["train"]["list_sizes"] == {"3": 16, "4": 32}
    metrics = read_metrics(tmp_path / "run")
    train = [m for m in metrics if "loss" in m]
    assert len(train) == 3 and all(math.isfinite(m["loss"]) for m in train)
    evals = [m for m in metrics if "eval_loss" in m]
    assert evals and math.isfinite(evals[-1]["eval_loss"])
    for name in ("eval_rank/ndcg", "eval_rank/kendall_tau"):  # held-out lists: ranking metrics, logged and summed up
        assert -1 <= evals[-1][name] <= 1 and name in summary["eval"] and name in summary["eval_before"]
    if "loss=simpo" in overrides:  # reference-free: the starting model gives the implicit DPO figures on lists too
        assert summary["eval_before"]["eval_dpo/margin"] == 0.0 and 0 <= summary["eval"]["eval_dpo/accuracy"] <= 1


def test_signal_columns_reach_the_loss(tmp_path):
    """Pair data with weight, margin and confidence columns: weights 0 make the logged loss 0; a margin of 5 raises
    the first step's DPO loss above the plain run's; confidence 1 changes nothing."""
    from po.data.toy import generate

    def run(name, extra, overrides):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({**r, **extra}) + "\n" for r in generate(40, seed=2)))
        run_train(tmp_path / name, ["data=jsonl", f"data.path={path}", "data.max_length=64", "data.eval_fraction=0",
                                    "trainer.max_steps=2", "trainer.logging_steps=1", "loss=dpo", *overrides],
                  fast=False)
        return [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m]

    plain = run("plain", {}, [])
    confident = run("confident", {"c": 1.0}, ["data.extra_columns.confidence=c"])
    assert confident == pytest.approx(plain, abs=1e-6)
    assert run("zero", {"w": 0.0}, ["data.extra_columns.weight=w"]) == [0.0, 0.0]
    assert run("margin", {"m": 5.0}, ["data.extra_columns.margin=m"])[0] > plain[0] + 1.0


def test_reference_cache_and_po_cache_ref_serve_lists(tmp_path, ranked_file):
    """po-cache-ref stores one entry per (prompt, response); a run with reference=cached reads them (a hit, no
    reference model) and logs the same losses as a run with the frozen reference model."""
    from po.cli.cache_ref import fill_reference_cache
    from tests.helpers.runs import compose_cfg

    common = ["data=jsonl", f"data.path={ranked_file}", "data.max_length=64", "data.eval_fraction=0.2",
              "trainer.max_steps=2", "trainer.logging_steps=1", "loss=lipo"]
    cache = ["reference=cached", f"reference.dir={tmp_path / 'ref'}"]
    facts = fill_reference_cache(compose_cfg([*common, *cache]))
    rows = [json.loads(line) for line in ranked_file.read_text().splitlines()]
    distinct = {(json.dumps(r["prompt"]), json.dumps(y)) for r in rows for y in r["responses"]}
    assert not facts["hit"] and facts["unit"] == "responses" and facts["pairs"] == len(distinct) < 16 * 3 + 44 * 4
    cached = run_train(tmp_path / "cached", [*common, *cache], fast=False)
    assert cached["reference_cache"]["hit"] and cached["models_loaded"] == 1
    run_train(tmp_path / "model", [*common, "reference=model"], fast=False)
    a = [m["loss"] for m in read_metrics(tmp_path / "cached") if "loss" in m]
    b = [m["loss"] for m in read_metrics(tmp_path / "model") if "loss" in m]
    assert a == pytest.approx(b, abs=1e-5)


def test_lora_on_lists_uses_the_adapter_disabled_policy_as_reference(tmp_path, ranked_file):
    """peft=lora: reference values per response from the policy with its adapters off; at the start (adapters are
    zero) every log-ratio is 0, so Plackett-Luce DPO on a list of K untied responses is log K!."""
    summary = run_train(tmp_path / "lora", ["data=jsonl", f"data.path={ranked_file}", "data.max_length=64",
                                            "data.eval_fraction=0.2", "trainer.max_steps=2", "trainer.logging_steps=1",
                                            "loss=pl_dpo", "peft=lora"], fast=False)
    assert summary["reference"] == "adapter"
    before = summary["eval_before"]
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    ks = [len(json.loads(line)["scores"]) for line in ranked_file.read_text().splitlines()]
    assert math.log(6) - 1e-4 <= before["eval_loss"] <= math.log(24) + 1e-4 and max(ks) == 4


def test_a_loss_that_needs_hidden_states_is_refused_on_lists_before_any_model(tmp_path, ranked_file, monkeypatch):
    import po.models.policy
    from po.errors import ConfigError

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(po.models.policy, "load_policy", no_model)
    with pytest.raises(ConfigError, match="computes for pairs only; the data holds ranked lists"):
        run_train(tmp_path / "sparse", ["data=jsonl", f"data.path={ranked_file}", "data.max_length=64",
                                        "loss=sparsepo", "trainer.max_steps=1"], fast=False)
