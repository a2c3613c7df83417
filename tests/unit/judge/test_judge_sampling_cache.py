"""Sampling with common random numbers, sequence log-probs, and the verified starting-model cache."""

import json
import logging

import torch
from omegaconf import OmegaConf

from po.judge import cache
from po.judge.sampling import SamplingSettings, sample_responses, sequence_logps
from po.models.policy import build_tiny_model
from po.models.tokenizer import load_tokenizer
from po.run.judged import start_key
from po.step.logprobs import token_logps
from tests.helpers.runs import compose_cfg

SETTINGS = SamplingSettings(samples_per_prompt=2, max_new_tokens=12, batch_size=2, seed=3)


def tiny():
    cfg = compose_cfg([]).model
    tokenizer = load_tokenizer(cfg)
    return cfg, tokenizer, build_tiny_model(cfg, tokenizer, 0)


def prompts(tokenizer):
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=False), add_special_tokens=False).input_ids
            for q in ("Tell me about cats.", "Why tea?", "Hi")]


def test_same_model_same_seeds_same_samples_and_global_rng_untouched():
    cfg, tokenizer, model = tiny()
    copy = build_tiny_model(cfg, tokenizer, 0)
    ps = prompts(tokenizer)
    state = torch.random.get_rng_state()
    first = sample_responses(model, ps, tokenizer, SETTINGS)
    assert torch.equal(state, torch.random.get_rng_state())
    assert first == sample_responses(copy, ps, tokenizer, SETTINGS)  # the starting model's draws match
    assert len(first) == 3 and all(len(rs) == 2 for rs in first)
    assert first[0][0] != first[0][1]  # samples of one prompt differ
    assert all(0 < len(r) <= 12 and (len(r) < 12) <= (r[-1] == tokenizer.eos_token_id) for rs in first for r in rs)
    other = sample_responses(model, ps, tokenizer, SamplingSettings(2, 12, batch_size=2, seed=4))
    assert other != first


def test_sequence_logps_match_one_sequence_at_a_time():
    _, tokenizer, model = tiny()
    ps = prompts(tokenizer)
    responses = sample_responses(model, ps, tokenizer, SETTINGS)
    batched = sequence_logps(model, ps, responses, batch_size=4)
    p, r = ps[1], responses[1][1]
    mask = torch.zeros(1, len(p) + len(r), dtype=torch.bool)
    mask[0, len(p):] = True
    ids = torch.tensor([p + r])
    with torch.no_grad():
        alone = token_logps(model.eval(), ids, torch.ones_like(ids), mask).sum().item()
    assert abs(batched[1][1] - alone) < 1e-3


def test_cache_entry_round_trip_corruption_and_key(tmp_path, caplog):
    path = cache.entry_path(tmp_path, "k1")
    entry = {"format": cache.CACHE_FORMAT, "key": "k1", "responses": [[[1, 2]]], "scores": [[0.5]]}
    assert cache.write_entry(path, entry) and not cache.write_entry(path, entry)  # a valid entry is kept
    assert cache.read_entry(path, "k1")["responses"] == [[[1, 2]]]
    assert cache.read_entry(path, "k2") is None  # another key
    stored = json.loads(path.read_text())
    stored["scores"] = [[9.0]]  # changed on disk
    path.write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING):
        assert cache.read_entry(path, "k1") is None
    assert "does not match its checksum" in caplog.text
    path.write_text("{not json")
    assert cache.read_entry(path, "k1") is None
    assert cache.write_entry(path, entry) and cache.read_entry(path, "k1") is not None  # a bad file is replaced
    assert not [p for p in tmp_path.iterdir() if p != path]  # no temporary file left


def test_every_input_changes_the_key():
    cfg, tokenizer, _ = tiny()
    judge = OmegaConf.create({"kind": "function", "function": "po.judge.toy.score"})
    ps = prompts(tokenizer)
    base = start_key(cfg, 0, tokenizer, ps, SETTINGS, judge)
    assert base == start_key(cfg, 0, tokenizer, ps, SETTINGS, judge)
    changed = [
        start_key(cfg, 1, tokenizer, ps, SETTINGS, judge),                                   # model (seed)
        start_key(OmegaConf.merge(cfg, {"config": {"hidden_size": 32}}), 0, tokenizer, ps, SETTINGS, judge),
        start_key(cfg, 0, tokenizer, ps[:2], SETTINGS, judge),                               # prompts
        start_key(cfg, 0, tokenizer, ps, SamplingSettings(2, 13, batch_size=2, seed=3), judge),  # settings
        start_key(cfg, 0, tokenizer, ps, SETTINGS, OmegaConf.merge(judge, {"function": "po.judge.toy.length"})),
    ]
    assert len({base, *changed}) == 6
