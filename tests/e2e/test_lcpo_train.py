"""LCPO through the trainer: eta over the global batch, checkpoint/resume, annotator columns, every loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from po.config import build_loss, conf_dir
from po.data.toy import TOY_PATH
from po.errors import ConfigError
from po.run.validate import validate
from tests.helpers.runs import compose_cfg, read_metrics, run_train

ALL_LOSSES = sorted(p.stem for p in (conf_dir() / "loss").rglob("*.yaml"))
# LCPO reweights pairs: it wraps every pairwise loss; a listwise loss (takes_lists) is refused (test below)
LOSSES = [n for n in ALL_LOSSES if not build_loss(compose_cfg([f"loss={n}"]).loss).takes_lists]
ANNOTATORS = ("ann", "bob", "cy")


def noisy_toy(path: Path, rows: int = 240) -> Path:
    """The shipped toy pairs with annotator ann/bob/cy in turn; bob's labels are all flipped (a third of the set)."""
    lines = TOY_PATH.read_text().splitlines()[:rows]
    with open(path, "w") as f:
        for i, line in enumerate(lines):
            row = json.loads(line)
            who = ANNOTATORS[i % 3]
            if who == "bob":
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            f.write(json.dumps({**row, "who": who}) + "\n")
    return path


def final_eta(run_dir: Path) -> torch.Tensor:
    return torch.load(Path(run_dir) / "model" / "loss_state.pt", weights_only=True)["eta"]


def noisy_overrides(tmp_path: Path) -> list[str]:
    data = noisy_toy(tmp_path / "noisy.jsonl")
    return ["data=jsonl", f"data.path={data}", "data.eval_fraction=0", "weighting=lcpo", "weighting.alpha=0.5",
            "loss.beta=1.0", "trainer.logging_steps=1", "eval.before_training=false"]


@pytest.mark.slow
def test_accumulation_gives_the_eta_of_the_whole_batch(tmp_path):
    """batch 4 x accumulation 2 sees the same 8 pairs per step as batch 8: eta agrees at every step.
    An update per micro-batch (two EMA steps) or from one micro-batch only would move eta differently."""
    base = noisy_overrides(tmp_path) + ["trainer.max_steps=8"]
    run_train(tmp_path / "b8", base + ["trainer.per_device_train_batch_size=8"])
    run_train(tmp_path / "b4x2", base + ["trainer.per_device_train_batch_size=4",
                                         "trainer.gradient_accumulation_steps=2"])
    eta8, eta4x2 = final_eta(tmp_path / "b8"), final_eta(tmp_path / "b4x2")
    assert abs(eta8.item() - 0.9) > 0.02, "eta should have moved on data with a third of the labels flipped"
    torch.testing.assert_close(eta4x2, eta8, rtol=0, atol=1e-5)
    logged = [[m["lcpo/eta"] for m in read_metrics(tmp_path / run) if "lcpo/eta" in m and "loss" in m]
              for run in ("b8", "b4x2")]
    assert len(logged[0]) == 8
    assert logged[0] == pytest.approx(logged[1], abs=1e-5)


@pytest.mark.slow
def test_eta_survives_checkpoint_and_resume(tmp_path):
    """12 steps in one go vs 6 steps, checkpoint, and a fresh trainer resumed from it: the same final eta, and the
    checkpoint holds the eta the run had after step 6 (not the initial 0.9)."""
    from po.run.build import build_trainer

    overrides = noisy_overrides(tmp_path) + ["trainer.max_steps=12", "trainer.save_strategy=steps",
                                             "trainer.save_steps=6"]
    run_train(tmp_path / "full", overrides)
    checkpoint = tmp_path / "full" / "checkpoints" / "checkpoint-6"
    saved = torch.load(checkpoint / "loss_state.pt", weights_only=True)["eta"]
    after_6 = [m["lcpo/eta"] for m in read_metrics(tmp_path / "full") if m.get("step") == 7 and "loss" in m]
    assert saved.item() == pytest.approx(after_6[0], abs=1e-6) and abs(saved.item() - 0.9) > 0.01

    cfg = compose_cfg(["trainer.disable_tqdm=true"] + overrides)
    trainer, _, _ = build_trainer(cfg, tmp_path / "resumed")
    trainer.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(trainer.loss_module.eta.cpu(), final_eta(tmp_path / "full"), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_annotator_column_gives_one_eta_per_annotator(tmp_path):
    """Annotator ids (strings) are mapped at load and saved; bob, whose labels are all flipped, ends with the lowest
    eta; a held-out annotator never seen in training is evaluated with the mean eta (no error)."""
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({**json.loads(line), "who": "zed"})
                                 for line in TOY_PATH.read_text().splitlines()[-20:]) + "\n")
    run = tmp_path / "run"
    summary = run_train(run, noisy_overrides(tmp_path) + [
        "weighting.annotator_column=who", f"data.eval_path={heldout}", "trainer.max_steps=20"])
    mapping = json.loads((run / "annotators.json").read_text())
    assert mapping == {"ann": 0, "bob": 1, "cy": 2}
    eta = final_eta(run)
    assert eta.shape == (3,)
    assert eta[1] < eta[0] - 0.05 and eta[1] < eta[2] - 0.05
    last = [m for m in read_metrics(run) if "lcpo/eta/bob" in m][-1]
    assert {"lcpo/eta/ann", "lcpo/eta/cy", "lcpo/w_mean", "lcpo/w_min", "lcpo/frac_w_below_half"} <= set(last)
    assert "eval_lcpo/w_mean" in summary["eval"]


@pytest.mark.slow
def test_lcpo_refuses_a_listwise_loss_in_one_line():
    listwise = sorted(set(ALL_LOSSES) - set(LOSSES))
    assert {"pl_dpo", "lipo"} <= set(listwise)
    for name in listwise:
        with pytest.raises(ConfigError) as err:
            validate(compose_cfg([f"loss={name}", "weighting=lcpo"]))
        assert "weighting=lcpo reweights pairs" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_with_lcpo(tmp_path, loss):
    """`po-train loss=X weighting=lcpo` for every conf/loss/*.yaml: trains, logs eta and w, checkpoints eta."""
    run = tmp_path / loss
    summary = run_train(run, [f"loss={loss}", "weighting=lcpo", "trainer.max_steps=3", "trainer.logging_steps=1",
                              "data.max_rows=120", "eval.before_training=false"])
    assert summary["steps"] == 3
    logged = [m for m in read_metrics(run) if "loss" in m]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in logged)
    assert {"lcpo/eta", "lcpo/w_mean", "rewards/accuracies"} <= set(logged[-1])
    assert 1e-4 <= final_eta(run).item() <= 1 - 1e-4
