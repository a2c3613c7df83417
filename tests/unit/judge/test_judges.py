"""The three judges: a function judge's output is checked; a tiny reward model scores through its chat template in
batches; a pairwise judge that always answers "first" gives exactly 0.5 (both orders averaged)."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from po.errors import POError
from po.judge import toy
from po.judge.judges import answer_tokens, function_judge, load_judge, preferences
from tests.helpers.judges import first_answer_judge, tiny_reward_model

QUESTION = "Which is better?\nUser: {prompt}\nA: {a}\nB: {b}\nThe better response is"


def judge_cfg(kind, path, batch_size=4):
    return OmegaConf.create({"kind": kind, "name_or_path": str(path), "revision": None, "dtype": "auto",
                             "batch_size": batch_size, "max_length": 256, "question": QUESTION,
                             "answers": [" A", " B"]})


def test_function_judge_output_is_checked():
    assert function_judge(toy.length).score(["p", "p"], ["ab", "abc"]) == [2.0, 3.0]
    with pytest.raises(POError, match="returned 1 scores for 2 responses"):
        function_judge(lambda p, r: [1.0]).score(["p", "p"], ["a", "b"])
    with pytest.raises(POError, match="non-finite"):
        function_judge(lambda p, r: [math.nan] * len(r)).score(["p"], ["a"])
    with pytest.raises(POError, match="not a list of numbers"):
        function_judge(lambda p, r: None).score(["p"], ["a"])


def test_pointwise_preferences_count_ties_half_and_reuse_start_scores():
    judge = function_judge(toy.length)
    prefs, mine, theirs = preferences(judge, ["p"] * 3, ["aa", "a", "aaa"], ["a", "a", "aaaa"])
    assert prefs == [1.0, 0.5, 0.0] and mine == [2.0, 1.0, 3.0] and theirs == [1.0, 1.0, 4.0]
    prefs, _, theirs = preferences(judge, ["p"], ["aa"], ["a"], start_scores=[5.0])  # cached scores win
    assert prefs == [0.0] and theirs == [5.0]


def test_toy_score_prefers_every_shipped_chosen_answer():
    from po.data.toy import generate

    rows = generate(200)
    prompts = [r["prompt"][0]["content"] for r in rows]
    chosen = toy.score(prompts, [r["chosen"][0]["content"] for r in rows])
    rejected = toy.score(prompts, [r["rejected"][0]["content"] for r in rows])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_reward_model_scores_through_its_chat_template_in_batches(tmp_path):
    folder = tiny_reward_model(tmp_path / "rm")
    prompts, responses = ["Tell me about cats.", "Hi", "Why tea?"], ["Cats are nice.", "No.", "Because tea is warm."]
    batched = load_judge(judge_cfg("reward_model", folder, batch_size=3), "cpu").score(prompts, responses)
    single = load_judge(judge_cfg("reward_model", folder, batch_size=1), "cpu").score(prompts, responses)
    assert batched == pytest.approx(single, abs=1e-5)  # padding does not change a score
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]},
                                         {"role": "assistant", "content": responses[0]}], tokenize=False)
    assert "<|assistant|>" in text
    with torch.no_grad():
        direct = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
    assert batched[0] == pytest.approx(direct, abs=1e-5)


def test_position_biased_pairwise_judge_gives_one_half(tmp_path):
    folder = first_answer_judge(tmp_path / "judge")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prefix, tok_a, tok_b = answer_tokens(tokenizer, [" A", " B"])
    ids = tokenizer(QUESTION.format(prompt="q", a="x", b="y")).input_ids + prefix
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    assert logps[tok_a] - logps[tok_b] > 20  # the model always answers "first"
    judge = load_judge(judge_cfg("pairwise", folder), "cpu")
    prefs = judge.prefer(["Tell me about cats.", "Hi"], ["Cats are nice.", "No."], ["No.", "Hello there."])
    assert prefs == pytest.approx([0.5, 0.5], abs=1e-6)
    assert preferences(judge, ["p"], ["a"], ["b"])[0] == pytest.approx([0.5], abs=1e-6)
