"""reference=cached: hit, miss, stale keys, killed writer, concurrent writers, CLI, and same losses as live."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from po.data.load import load_preference_data
from po.errors import ConfigError
from po.models.tokenizer import load_tokenizer
from po.run.refcache import cache_key, cache_path, read_table, write_table
from tests.helpers.runs import REPO, compose_cfg, read_metrics, run_train

SHORT = ["trainer.max_steps=4", "trainer.logging_steps=1", "data.max_rows=40", "eval.before_training=false"]


def _cached(tmp_path: Path, *extra: str) -> list[str]:
    return SHORT + ["reference=cached", f"reference.dir={tmp_path / 'cache'}", *extra]


def _key(overrides: list[str]) -> str:
    cfg = compose_cfg(overrides)
    tok = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, tok, cfg.seed)
    return cache_key(cfg.model, cfg.data, cfg.seed, tok, [data.train, data.eval])[0]


def _losses(run_dir: Path) -> torch.Tensor:
    return torch.tensor([m["loss"] for m in read_metrics(run_dir) if "loss" in m])


@pytest.mark.slow
def test_miss_then_hit_same_losses_as_live_reference(tmp_path, monkeypatch):
    run_train(tmp_path / "live", SHORT + ["reference=model"])
    miss = run_train(tmp_path / "miss", _cached(tmp_path))
    assert miss["reference_cache"]["hit"] is False and miss["reference_cache"]["written"] is True
    assert miss["models_loaded"] == 2
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"

    import po.models.policy

    def no_reference(*args, **kwargs):
        raise AssertionError("a cache hit must not load the reference model")

    monkeypatch.setattr(po.models.policy, "load_reference", no_reference)
    hit = run_train(tmp_path / "hit", _cached(tmp_path))
    assert hit["reference_cache"]["hit"] is True and hit["models_loaded"] == 1
    torch.testing.assert_close(_losses(tmp_path / "miss"), _losses(tmp_path / "live"), atol=1e-5, rtol=0)
    torch.testing.assert_close(_losses(tmp_path / "hit"), _losses(tmp_path / "live"), atol=1e-5, rtol=0)
    assert len(_losses(tmp_path / "hit")) == 4


def test_stale_keys_differ(tmp_path):
    """A changed model, tokenizer, data or tokenization setting is a different key (so never reused)."""
    base = ["data.max_rows=30"]
    k0 = _key(base)
    assert _key(base) == k0  # deterministic
    changed = {
        "model seed": ["seed=1"],
        "model size": ["model.config.hidden_size=32"],
        "model architecture": ["model.architecture=qwen2"],
        "data": ["data.max_rows=29"],
        "max_length": ["data.max_length=96"],
        "max_prompt_length": ["data.max_prompt_length=40"],
    }
    keys = {name: _key(base + o) for name, o in changed.items()}
    for name, k in keys.items():
        assert k != k0, name
    assert len(set(keys.values())) == len(keys)


def test_settings_that_do_not_change_the_tokens_keep_the_key(tmp_path):
    """Where the tokenized data is cached (or whether), how many processes tokenize, what po-data prints and
    data.strict change no token id: a run that sets them must find the values another run cached."""
    base = ["data.max_rows=30"]
    k0 = _key(base)
    assert _key(base + [f"data.cache_dir={tmp_path / 'elsewhere'}", "data.cache=false", "data.show_examples=1",
                        "data.strict=true"]) == k0


def test_tokenizer_change_changes_key(monkeypatch):
    cfg = compose_cfg(["data.max_rows=10"])
    tok = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, tok, cfg.seed)
    k0 = cache_key(cfg.model, cfg.data, cfg.seed, tok, [data.train])[0]
    tok.chat_template = tok.chat_template + " "
    assert cache_key(cfg.model, cfg.data, cfg.seed, tok, [data.train])[0] != k0


def test_data_fingerprint_is_order_independent():
    cfg = compose_cfg(["data.max_rows=20"])
    tok = load_tokenizer(cfg.model)
    rows = list(load_preference_data(cfg.data, tok, cfg.seed).train)
    assert cache_key(cfg.model, cfg.data, cfg.seed, tok, [rows])[0] == cache_key(cfg.model, cfg.data, cfg.seed, tok, [rows[::-1]])[0]
    assert cache_key(cfg.model, cfg.data, cfg.seed, tok, [rows])[0] != cache_key(cfg.model, cfg.data, cfg.seed, tok, [rows[1:]])[0]


def test_killed_writer_leaves_nothing_readable(tmp_path):
    """A writer killed mid-write leaves only its temporary file; readers see a miss, a later writer succeeds."""
    key = "k" * 32
    path = cache_path(tmp_path, key)
    script = (f"import torch, os, sys; sys.path.insert(0, {str(REPO)!r}); from po.run.refcache import write_table\n"
              "torch.save = lambda obj, fh: (fh.write(b'partial'), fh.flush(), os._exit(9))\n"
              f"write_table(__import__('pathlib').Path({str(path)!r}), {{'key': {key!r}}})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == 9
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp") and not path.exists()
    assert read_table(path, key) is None
    table = {"format": 1, "key": key, "pair_keys": torch.tensor([1])}
    assert write_table(path, table) is True
    assert read_table(path, key)["pair_keys"].tolist() == [1]
    assert read_table(path, "other") is None  # a file is only read for its own key


def test_concurrent_loser_discards_its_copy(tmp_path):
    key = "c" * 32
    path = cache_path(tmp_path, key)
    assert write_table(path, {"format": 1, "key": key, "who": torch.tensor([1])}) is True
    assert write_table(path, {"format": 1, "key": key, "who": torch.tensor([2])}) is False
    assert read_table(path, key)["who"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_refused_for_loss_needing_more_than_token_logps(monkeypatch):
    from losses.dpo import DPOLoss
    from po.run.validate import validate

    monkeypatch.setattr(DPOLoss, "needs", frozenset({"token_logps", "token_kl"}))
    with pytest.raises(ConfigError, match="reference=cached.*token_kl"):
        validate(compose_cfg(["reference=cached"]))


@pytest.mark.slow
def test_cli_fills_cache_then_train_hits(tmp_path):
    over = ["data.max_rows=20", f"reference.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'h'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "po.cli.cache_ref", *over]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "written" in first.stdout
    from po.cli.cache_ref import fill_reference_cache

    again = fill_reference_cache(compose_cfg(over[:2] + ["reference=cached"]))
    assert again["hit"] is True and again["pairs"] > 0
    summary = run_train(tmp_path / "run", ["trainer.max_steps=2", "data.max_rows=20", "reference=cached",
                                           f"reference.dir={tmp_path / 'cache'}", "eval.before_training=false"])
    assert summary["reference_cache"]["hit"] is True
