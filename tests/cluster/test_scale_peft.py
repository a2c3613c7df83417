"""PEFT: LoRA trains only adapters, its reference is the base model (no second model), and the export reloads.

Also: `peft=qlora` fails at config time without CUDA, and every `peft`/`deepspeed` option composes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from po.errors import ConfigError
from po.run.validate import validate
from po.step.logprobs import token_logps
from po.step.reference import AdapterReference
from tests.helpers.runs import REPO, compose_cfg

LORA = ["peft=lora", "peft.r=4", "peft.dropout=0.0", "trainer.max_steps=4", "trainer.logging_steps=2",
        "trainer.disable_tqdm=true", "trainer.learning_rate=1e-2", "data.max_rows=40", "data.max_length=48",
        "trainer.per_device_train_batch_size=4", "eval.before_training=false"]


def _built_trainer(tmp_path, overrides):
    from po.run.build import build_trainer

    cfg = compose_cfg(LORA + list(overrides))
    validate(cfg)
    return cfg, *build_trainer(cfg, tmp_path)


def _batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def _logps(model, batch):
    with torch.no_grad():
        return token_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])


def test_lora_builds_one_model_and_trains_only_adapters(tmp_path, monkeypatch):
    import po.models.policy

    builds = []
    real = po.models.policy.build_tiny_model
    monkeypatch.setattr(po.models.policy, "build_tiny_model", lambda *a, **k: builds.append(1) or real(*a, **k))
    cfg, trainer, _, facts = _built_trainer(tmp_path, [])
    assert len(builds) == 1 and facts["models_loaded"] == 1 and facts["reference"] == "adapter"
    assert isinstance(trainer.reference, AdapterReference)

    model = trainer.model
    model.train()
    batch = {k: v.to(trainer.args.device) for k, v in _batch(trainer).items()}
    trainer.compute_loss(model, batch).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable and with_grad, "exactly the trainable parameters receive gradients"
    assert all("lora_" in n for n in with_grad), sorted(n for n in with_grad if "lora_" not in n)
    targets = set(cfg.peft.target_modules)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in with_grad}
    assert adapted == targets  # every configured target module of the Llama block got an adapter


def test_adapter_reference_equals_base_model(tmp_path):
    from po.models.policy import build_tiny_model
    from po.step.pair_batch import pair_loss

    cfg, trainer, tokenizer, _ = _built_trainer(tmp_path, [])
    model = trainer.model
    with torch.no_grad():  # move the adapters away from their zero start so that they change the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    batch = _batch(trainer)
    base = build_tiny_model(cfg.model, tokenizer, cfg.seed).eval()  # the starting model, built again

    def compute(m):
        return token_logps(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"])

    ref = trainer.reference.run(model, compute)
    torch.testing.assert_close(ref, _logps(base, batch), rtol=0, atol=1e-5)
    assert (_logps(model, batch) - ref).abs().max() > 1e-2  # with adapters on, the policy differs
    model.train()
    trainer.reference.run(model, compute)
    assert model.training, "the reference pass restores training mode"
    out = pair_loss(model, batch, trainer.loss_module, trainer.reference)
    assert torch.isfinite(out.per_pair).all()


def test_lora_export_adapter_and_merged_model_reload(tmp_path):
    from peft import PeftModel

    from po.models.policy import build_tiny_model
    from po.run.export import export_model

    cfg, trainer, tokenizer, _ = _built_trainer(tmp_path, ["model.merge_lora_on_save=true"])
    trainer.train()
    batch = _batch(trainer)
    trained = _logps(trainer.model.eval(), batch)

    adapter_dir = tmp_path / "adapter"
    cfg.model.merge_lora_on_save = False
    facts = export_model(trainer, cfg.model.merge_lora_on_save, adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file() and "load_with" in facts
    base = build_tiny_model(cfg.model, tokenizer, cfg.seed)
    reloaded_adapter = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    torch.testing.assert_close(_logps(reloaded_adapter, batch), trained, rtol=0, atol=1e-5)

    merged_dir = tmp_path / "merged"
    cfg.model.merge_lora_on_save = True
    facts = export_model(trainer, cfg.model.merge_lora_on_save, merged_dir)
    assert facts["model_format"] == "hf (LoRA merged)"
    assert not (merged_dir / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(_logps(plain, batch), trained, rtol=0, atol=1e-4)
    untrained = build_tiny_model(cfg.model, tokenizer, cfg.seed).eval()
    assert (_logps(untrained, batch) - trained).abs().max() > 1e-3  # the adapters did change the model


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_qlora_without_cuda_is_a_one_line_config_error(tmp_path):
    cfg = compose_cfg(["peft=qlora", "model=hf", "model.name_or_path=some/model"])
    with pytest.raises(ConfigError, match="needs a CUDA GPU; on this machine use peft=lora"):
        validate(cfg)
    proc = subprocess.run([sys.executable, "-m", "po.cli", "peft=qlora", "model=hf", "model.name_or_path=x",
                           f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("po-train: error: peft=qlora")
    assert "Traceback" not in proc.stderr


def test_merge_without_peft_is_rejected():
    with pytest.raises(ConfigError, match="merge_lora_on_save=true needs peft=lora"):
        validate(compose_cfg(["model.merge_lora_on_save=true"]))


@pytest.mark.parametrize("group,option", [("peft", p.stem) for p in sorted((REPO / "conf/peft").glob("*.yaml"))]
                         + [("deepspeed", p.stem) for p in sorted((REPO / "conf/deepspeed").glob("*.yaml"))])
def test_every_peft_and_deepspeed_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    if option == "qlora" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            validate(cfg)
        return
    validate(cfg)
    if group == "deepspeed" and option != "none":
        assert cfg.deepspeed.config.zero_optimization.stage in (2, 3)


def test_wrapping_with_lora_warns_nothing_the_user_did_not_cause():
    """peft asks the model `is_gradient_checkpointing` (renamed in transformers 5): no FutureWarning reaches the user."""
    import warnings

    from po.models.peft import apply_peft
    from po.models.policy import load_policy
    from po.models.tokenizer import load_tokenizer

    cfg = compose_cfg(["peft=lora"])
    policy = load_policy(cfg.model, load_tokenizer(cfg.model), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        apply_peft(policy, cfg.peft)
