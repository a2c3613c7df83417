"""The tiny model's supervised warm-up (`model.warmup`): deterministic, cached and verified on disk, and part of the
starting model everywhere (policy, frozen reference, the reference-cache and judge-cache keys)."""

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

from po.models import warmup
from po.models.policy import build_tiny_model, load_policy, load_reference
from po.models.tokenizer import load_tokenizer
from po.run.refcache import model_fingerprint
from tests.helpers.runs import compose_cfg


def model_cfg(tmp_path, steps=3):
    return compose_cfg([f"model.warmup.steps={steps}", f"model.warmup.dir={tmp_path}"]).model


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_warmup_changes_the_weights_deterministically_and_is_cached(tmp_path, monkeypatch):
    cfg = model_cfg(tmp_path)
    tokenizer = load_tokenizer(cfg)
    cold = build_tiny_model(model_cfg(tmp_path, steps=0), tokenizer, 0)
    warm = build_tiny_model(cfg, tokenizer, 0)
    assert not same(cold, warm)
    [entry] = list(tmp_path.glob("*.pt"))
    trained = []
    monkeypatch.setattr(warmup, "_train", lambda *a: trained.append(1))
    assert same(build_tiny_model(cfg, tokenizer, 0), warm) and not trained  # read from the cache
    monkeypatch.undo()
    entry.write_bytes(entry.read_bytes()[:-50])  # truncated on disk
    again = build_tiny_model(cfg, tokenizer, 0)  # recomputed: the same weights (deterministic)
    assert same(again, warm)
    assert not same(build_tiny_model(cfg, tokenizer, 1), warm)  # another seed, another model


def test_warmup_is_part_of_the_starting_model_and_its_keys(tmp_path):
    cfg = model_cfg(tmp_path)
    tokenizer = load_tokenizer(cfg)
    policy = load_policy(cfg, tokenizer, 0)
    assert same(load_reference(cfg, tokenizer, 0, policy), policy)
    off = OmegaConf.merge(cfg, {"warmup": {"steps": 0}})
    longer = OmegaConf.merge(cfg, {"warmup": {"steps": 4}})
    keys = {str(model_fingerprint(c, 0)) for c in (cfg, off, longer)}
    assert len(keys) == 3  # the reference cache (and the judge cache, which hashes it) tells them apart


def test_bad_cache_entry_is_one_warning(tmp_path, caplog):
    cfg = model_cfg(tmp_path)
    tokenizer = load_tokenizer(cfg)
    key = warmup.warmup_key(cfg, tokenizer, 0)
    path = warmup.cache_path(cfg, key)
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING):
        build_tiny_model(cfg, tokenizer, 0)
    assert "warm-up cache" in caplog.text and warmup._read(path, key) is not None  # replaced by a good entry


def test_warmup_is_on_for_the_tiny_model_and_off_for_hf():
    assert warmup.warmup_settings(compose_cfg([]).model)["steps"] > 0
    assert warmup.warmup_settings(compose_cfg(["model=hf", "model.name_or_path=x"]).model) is None


@pytest.mark.parametrize("answers", ["both", "chosen", "rejected"])
def test_warmup_trains_on_the_answers_it_is_told(tmp_path, answers):
    """`both` (the default): a start that writes good and bad answers, as a supervised model does, chosen and
    rejected weighing the same; `chosen` or `rejected`: that answer of every pair only."""
    tokenizer = load_tokenizer(model_cfg(tmp_path))
    rows = [json.loads(line) for line in warmup.TOY_PATH.read_text().splitlines()]
    texts = [tokenizer.decode(ids[start:]) for ids, start in warmup._conversations(tokenizer, answers)]
    names = {"both": ["chosen", "rejected"], "chosen": ["chosen"], "rejected": ["rejected"]}[answers]
    assert len(texts) == len(names) * len(rows)
    for i, row in enumerate(rows):
        for j, name in enumerate(names):
            assert row[name][0]["content"] in texts[i * len(names) + j]


def test_the_answers_are_part_of_the_starting_model(tmp_path):
    cfg = model_cfg(tmp_path)
    assert compose_cfg([]).model.warmup.answers == "both"
    tokenizer = load_tokenizer(cfg)
    starts = {a: build_tiny_model(OmegaConf.merge(cfg, {"warmup": {"answers": a}}), tokenizer, 0)
              for a in ("both", "rejected")}
    assert not same(starts["both"], starts["rejected"])
    keys = {str(model_fingerprint(OmegaConf.merge(cfg, {"warmup": {"answers": a}}), 0)) for a in ("both", "rejected")}
    assert len(keys) == 2 and len(list(tmp_path.glob("*.pt"))) == 2
