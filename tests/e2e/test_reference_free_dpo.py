"""A reference-free run (SimPO) reports the implicit DPO figures against its starting model too, so the report
compares every loss on the same quantity."""

import pytest

from tests.helpers.runs import run_train

pytestmark = pytest.mark.slow


def test_simpo_reports_dpo_accuracy_against_the_starting_model(tmp_path):
    summary = run_train(tmp_path / "on", ["loss=simpo", "trainer.max_steps=4"])
    before, after = summary["eval_before"], summary["eval"]
    assert summary["reference"] == "none" and summary["models_loaded"] == 2  # the policy + the starting model
    assert before["eval_dpo/margin"] == 0.0 and before["eval_dpo/accuracy"] == 0.0  # the policy is the start
    assert after["eval_dpo/margin"] != 0.0 and 0.0 <= after["eval_dpo/accuracy"] <= 1.0
    off = run_train(tmp_path / "off", ["loss=simpo", "trainer.max_steps=4", "eval.reference_free_dpo=false"])
    assert "eval_dpo/accuracy" not in off["eval"] and off["models_loaded"] == 1
