"""SparsePO through `po-train`: two architectures, all mask kinds, the mask network's optimizer group, save/resume,
and the config-time errors."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from po.errors import ConfigError
from po.run.validate import validate
from po.trainer.loss_hooks import LOSS_STATE_FILE
from tests.helpers.runs import compose_cfg, read_metrics, run_train

SHORT = ["trainer.max_steps=4", "trainer.logging_steps=2", "eval.before_training=false", "data.max_rows=64",
         "trainer.per_device_train_batch_size=4"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("mask", ["learned", "activations", "none"])
def test_po_train_sparsepo_trains(tmp_path, arch, mask):
    """`po-train loss=sparsepo loss.mask=...` trains on Llama and GPT-2 (tiny.yaml's model.config works for both)."""
    summary = run_train(tmp_path, SHORT + ["loss=sparsepo", f"loss.mask={mask}", f"model.architecture={arch}"])
    assert summary["steps"] == 4
    last = [m for m in read_metrics(tmp_path) if "loss" in m][-1]
    assert math.isfinite(last["loss"]) and last["kl/chosen"] > 0   # the policy moved away from the reference
    assert {"kl/weighted_chosen", "kl/weighted_rejected", "mask/sparsity", "mask/mean", "mask/l1"} <= set(last)
    if mask == "none":
        assert last["mask/mean"] == 1.0 and last["kl/weighted_chosen"] == pytest.approx(last["kl/chosen"])
    assert (tmp_path / "model" / LOSS_STATE_FILE).is_file() == (mask == "learned")
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert not any("mask" in k for k in weights)   # the exported model stays a plain causal LM


def test_mask_params_get_their_own_optimizer_group(tmp_path):
    from po.run.build import build_trainer

    cfg = compose_cfg(SHORT + ["loss=sparsepo", "loss.mask_weight_decay=0.123", "trainer.weight_decay=0.0"])
    trainer, _, _ = build_trainer(cfg, tmp_path)
    optimizer = trainer.create_optimizer()
    mask_ids = {id(p) for p in trainer.loss_module.parameters()}
    assert mask_ids  # 1 LayerNorm (2), per-layer weight and bias, mixer
    groups = [g for g in optimizer.param_groups if mask_ids & {id(p) for p in g["params"]}]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == mask_ids
    assert groups[0]["weight_decay"] == 0.123 and groups[0]["lr"] == cfg.trainer.learning_rate
    assert trainer.create_optimizer() is optimizer and len(optimizer.param_groups) == 3  # not added twice


@pytest.mark.slow
def test_mask_params_change_and_survive_save_and_resume(tmp_path):
    from po.run.build import build_trainer

    overrides = SHORT + ["loss=sparsepo", "loss.mask_position=token", "trainer.max_steps=2",
                         "trainer.save_strategy=steps", "trainer.save_steps=1"]
    run_train(tmp_path / "run", overrides)
    step1 = torch.load(tmp_path / "run/checkpoints/checkpoint-1" / LOSS_STATE_FILE)
    step2 = torch.load(tmp_path / "run/checkpoints/checkpoint-2" / LOSS_STATE_FILE)
    final = torch.load(tmp_path / "run/model" / LOSS_STATE_FILE)
    assert any(not torch.equal(step1[k], step2[k]) for k in step1)          # an optimizer step changed them
    assert all(torch.equal(final[k], step2[k]) for k in step2)               # saved beside the final model

    trainer, _, _ = build_trainer(compose_cfg(overrides), tmp_path / "resumed")
    fresh = trainer.loss_module.state_dict()
    assert any(not torch.equal(fresh[k], step2[k]) for k in step2)
    trainer._load_from_checkpoint(str(tmp_path / "run/checkpoints/checkpoint-2"))
    restored = trainer.loss_module.state_dict()
    assert all(torch.equal(restored[k].cpu(), step2[k]) for k in step2)


@pytest.mark.parametrize("reference", ["none"])
def test_sparsepo_without_live_reference_is_a_config_error(reference):
    with pytest.raises(ConfigError, match="needs the live reference model's full logits"):
        validate(compose_cfg(["loss=sparsepo", f"reference={reference}"]))


def test_learned_mask_under_deepspeed_is_a_config_error():
    cfg = compose_cfg(["loss=sparsepo", "+deepspeed.config={zero_optimization: {stage: 2}}"])
    with pytest.raises(ConfigError, match="deepspeed=none"):
        validate(cfg)
    validate(compose_cfg(["loss=sparsepo", "loss.mask=activations", "+deepspeed.config={zero_optimization: {stage: 2}}"]))


@pytest.mark.parametrize("option", ["zero2", "zero3", "zero3_offload"])
def test_learned_mask_refusal_says_why_for_every_deepspeed_option(option):
    """The mask network is outside the model DeepSpeed wraps, and ZeRO's optimizer accepts only that model's
    parameters: with the refusal bypassed, DeepSpeed 0.19.8 fails while building its optimizer (ZeRO-2: KeyError in
    _create_param_mapping; ZeRO-3: the parameter has no partition_numel). The message says so and what to use."""
    with pytest.raises(ConfigError, match=r"outside the model, and DeepSpeed's ZeRO optimizer takes only the "
                                          r"parameters of the model in its engine.*use deepspeed=none"):
        validate(compose_cfg(["loss=sparsepo", f"deepspeed={option}"]))
    with pytest.raises(ConfigError, match="trains its own parameters"):   # also inside a weighting
        validate(compose_cfg(["loss=sparsepo", "weighting=lcpo", f"deepspeed={option}"]))
    validate(compose_cfg(["loss=sparsepo", "loss.mask=none", f"deepspeed={option}"]))


@pytest.mark.parametrize("override,match", [("loss.mask=random", "loss.mask=random"),
                                            ("loss.mask_position=next", "loss.mask_position"),
                                            ("loss.lambda_u=-1", "loss.lambda_u")])
def test_bad_sparsepo_values_are_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(compose_cfg(["loss=sparsepo", override]))


def test_packing_setting_does_not_change_sparsepo(tmp_path):
    """SparsePO reads per-row outputs, so it always trains on plain rows: the default (packing on) and
    trainer.packing=false give the same losses, and a packed batch handed to it is refused."""
    from po.data.collate import PackedPairCollator, PairCollator
    from po.step.pair_batch import pair_batch
    common = ["loss=sparsepo", "loss.mask=none", "trainer.max_steps=4", "trainer.logging_steps=1",
              "eval.before_training=false"]
    run_train(tmp_path / "packed", common)
    run_train(tmp_path / "plain", common + ["trainer.packing=false"])
    losses = [[m["loss"] for m in read_metrics(tmp_path / d) if "loss" in m] for d in ("packed", "plain")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-6)

    examples = [{"prompt_ids": [1, 5, 6], "chosen_ids": [7, 8], "rejected_ids": [9], "row_id": 0}]
    packed = PackedPairCollator(0)(examples)
    assert "pack_bounds" in packed and "pack_bounds" not in PairCollator(0)(examples)
    from losses.sparsepo import SparsePOLoss

    with pytest.raises(ValueError, match="plain rows"):
        pair_batch(torch.nn.Linear(1, 1), packed, SparsePOLoss(mask="none"), reference=None)
