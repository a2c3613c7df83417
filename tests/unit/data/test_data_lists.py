"""Ranked lists and per-pair signals in the data pipeline (po/data/formats.py, prepare.py, load.py, quality.py).

- `{"prompt", "responses", "scores"}` rows (text or messages, K varies) are lists; a pair file stays pairs.
- UltraFeedback's raw `completions` (score chosen by config) and the HelpSteer2-Preference shape are read as given.
- Ties, dropped responses and responses per prompt are counted with their line; bad values are one error line naming
  the file, line and field.
- Each response is tokenized once as a continuation of the prompt, and the tokenized cache serves lists.

Run: `python -m pytest tests/unit/data/test_data_lists.py -q`.
"""

from __future__ import annotations

import json
import math

import pytest

from po.data import prepare
from po.errors import ConfigError, DataError
from po.data.options import check_data_config
from tests.helpers.data import TOK, ids, load, write_jsonl
from tests.helpers.runs import compose_cfg


def ranked(prompt="Say hi", responses=("hello there", "hi", "go away", "hey"), scores=(3, 2, 0, 2), **extra):
    return {"prompt": prompt, "responses": list(responses), "scores": list(scores), **extra}


def test_ranked_rows_become_lists_with_their_scores(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        ranked(),
        ranked("Name a colour", ["red", "blue", "green"], [1, 5, 2]),
        ranked([{"role": "user", "content": "Greet me"}],
               [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "no"}]], [1.5, -1]),
    ])
    data = load(path)
    assert data.lists
    rows = data.train.to_list()
    assert [len(r["response_ids"]) for r in rows] == [4, 3, 2]
    assert rows[0]["scores"] == [3, 2, 0, 2] and rows[1]["scores"] == [1, 5, 2]
    # plain text: the prompt once, each response its own ids plus EOS; chosen/rejected are the best/worst
    assert rows[1]["response_ids"] == [ids(t) + [TOK.eos_token_id] for t in ("red", "blue", "green")]
    assert rows[1]["chosen_ids"] == rows[1]["response_ids"][1] and rows[1]["rejected_ids"] == rows[1]["response_ids"][0]
    report = data.reports["train"]
    assert report.list_sizes == {4: 1, 3: 1, 2: 1}
    assert report.tied == [f"{path} line 1"]
    lines = report.lines("t")
    assert lines[0].startswith("data[t]: 3 lists kept of 3 rows")
    assert any("ranked lists kept: 3 (responses per prompt: 2: 1, 3: 1, 4: 1)" in line for line in lines)


def test_pair_data_is_not_lists(tmp_path):
    data = load(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}]))
    assert not data.lists and "response_ids" not in data.train.column_names


def test_dropped_responses_and_tied_lists_are_counted_with_their_line(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [
        ranked(scores=[3, None, 1, float("nan")]),  # two responses dropped, list of two kept
        ranked(responses=["a", "", "c", "d"], scores=[1, 2, 3, 4]),  # empty response dropped
        ranked(scores=[2, 2, 2, 2]),  # all tie: dropped
        ranked(scores=[None, None, None, 1]),  # one usable response left: dropped
    ])
    data = load(path)
    report = data.reports["train"]
    assert report.kept == 2
    assert report.dropped_responses == [f"{path} line 1", f"{path} line 2"]
    assert report.fields[f"{path} line 1"] == "scores[1]" and report.fields[f"{path} line 2"] == "responses[1]"
    assert report.all_tied == [f"{path} line 3"] and report.too_few == [f"{path} line 4"]
    assert [len(r["response_ids"]) for r in data.train.to_list()] == [2, 3]
    one = write_jsonl(tmp_path / "one.jsonl", [ranked(), ranked(scores=[3, None, 1, 0])])
    with pytest.raises(DataError, match=r"one.jsonl line 2, field 'scores\[1\]': data.strict=true"):
        load(one, "data.strict=true")


@pytest.mark.parametrize("row, field, message", [
    (ranked(scores=[3, "high", 1, 0]), "scores[1]", "must be a number"),
    (ranked(scores=[3, 1]), "scores", "expected a list of 4 scores"),
    ({"prompt": "p", "responses": "hello", "scores": [1]}, "responses", "expected a list of responses"),
    (ranked(weight="heavy"), "w", "must be a number"),
    (ranked(weight=-1.0), "w", "must be in"),
    (ranked(conf=1.5), "conf", "must be in"),
    ({"prompt": "p", "response_1": "a", "response_2": "b", "preference_strength": 5}, "preference_strength",
     "must be in -3..3"),
    ({"prompt": "p", "response_1": "a", "response_2": "b", "preference_strength": "much"}, "preference_strength",
     "must be a number"),
])
def test_bad_values_are_one_line_with_file_line_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ranked(), row])
    extra = ["data.extra_columns.weight=w"] if "weight" in row else []
    extra += ["data.extra_columns.confidence=conf"] if "conf" in row else []
    if "weight" in row:
        row["w"] = row.pop("weight")
        write_jsonl(path, [ranked(w=1.0), row])
    if "conf" in row:
        write_jsonl(path, [ranked(conf=0.5), row])
    with pytest.raises(DataError) as err:
        load(path, *extra)
    assert str(err.value).startswith(f"{path} line 2, field '{field}': ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_nan_signal_drops_the_row_and_strict_names_it(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(ranked(m=0.5)) + "\n" + json.dumps(ranked(m=math.nan)) + "\n")
    data = load(path, "data.extra_columns.margin=m")
    assert data.reports["train"].not_finite == [f"{path} line 2"]
    assert data.train["margin"] == [0.5]
    with pytest.raises(DataError, match="line 2, field 'm'"):
        load(path, "data.extra_columns.margin=m", "data.strict=true")


def test_ultrafeedback_raw_reads_completions_with_the_configured_score(tmp_path):
    def completion(text, overall, helpful):
        return {"response": text, "overall_score": overall, "fine-grained_score": 3.0,
                "annotations": {"helpfulness": {"Rating": helpful, "Rationale": "..."}}}

    row = {"source": "x", "instruction": "Explain tides",
           "completions": [completion("The moon pulls water.", 8.0, "5"), completion("Magic.", 2.0, "1"),
                           completion("Wind.", 4.5, "N/A"), completion("Gravity of moon and sun.", 9.0, "4")]}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    data = load(path)
    r = data.train.to_list()[0]
    assert r["scores"] == [8.0, 2.0, 4.5, 9.0]
    assert r["response_ids"][1] == ids("Magic.") + [TOK.eos_token_id]
    by_aspect = load(path, "data.ultrafeedback_score=helpfulness")
    assert by_aspect.train.to_list()[0]["scores"] == [5.0, 1.0, 4.0]  # "N/A" dropped
    assert by_aspect.reports["train"].fields[f"{path} line 1"] == "completions[2].annotations.helpfulness.Rating"
    with pytest.raises(ConfigError, match="data.ultrafeedback_score=style"):
        check_data_config(compose_cfg(["data=jsonl", f"data.path={path}", "data.ultrafeedback_score=style"]).data)


def test_helpsteer2_maps_preference_to_chosen_and_strength_to_a_signal(tmp_path):
    rows = [{"prompt": "p1", "response_1": "one", "response_2": "two", "preference_strength": -2},
            {"prompt": "p2", "response_1": "uno", "response_2": "dos", "preference_strength": 3},
            {"prompt": "p3", "response_1": "x", "response_2": "y", "preference_strength": 0}]
    path = write_jsonl(tmp_path / "hs.jsonl", rows)
    data = load(path, "data.strength_as=weight")
    assert not data.lists
    out = data.train.to_list()
    assert [r["chosen_ids"] for r in out] == [ids("one") + [TOK.eos_token_id], ids("dos") + [TOK.eos_token_id]]
    assert [r["rejected_ids"] for r in out] == [ids("two") + [TOK.eos_token_id], ids("uno") + [TOK.eos_token_id]]
    assert data.train["weight"] == [2.0, 3.0]
    assert data.reports["train"].all_tied == [f"{path} line 3"]
    assert "margin" in load(path, "data.strength_as=margin").train.column_names


def test_mixed_pair_and_list_rows_and_the_cache_serves_lists(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [ranked(), {"prompt": "a", "chosen": "b", "rejected": "c"}])
    before = prepare.TOKENIZE_RUNS
    first = load(path)
    assert prepare.TOKENIZE_RUNS == before + 1 and first.reports["train"].cache == "miss"
    second = load(path)
    assert prepare.TOKENIZE_RUNS == before + 1 and second.reports["train"].cache == "hit"
    assert second.lists and second.train.to_list() == first.train.to_list()
    assert [len(r) for r in second.train["response_ids"]] == [4, 0]  # the pair row: a list of two in the collator
    assert second.reports["train"].lines("train")[0].startswith("data[train]: 2 rows kept of 2 rows")


def test_chat_lists_tokenize_each_response_as_a_pair_would(tmp_path):
    """The prompt is rendered once; each response's ids are exactly what a pair with that response would get."""
    from po.data.pairs import Pair
    from po.data.tokenize import tokenize_pair

    prompt = [{"role": "user", "content": "Greet me"}]
    responses = [[{"role": "assistant", "content": t}] for t in ("hello friend", "no", "hi")]
    data = load(write_jsonl(tmp_path / "c.jsonl", [ranked(prompt, responses, [2, 0, 1])]))
    row = data.train.to_list()[0]
    for k, response in enumerate(responses):
        pair = tokenize_pair(Pair(prompt, response, responses[k - 1], "x"), TOK)
        assert row["prompt_ids"] == pair.prompt_ids and row["response_ids"][k] == pair.chosen_ids


def test_po_data_shows_every_response_of_a_list(tmp_path):
    from po.cli.data import report

    path = write_jsonl(tmp_path / "r.jsonl", [ranked("Name a colour", ["red", "blue", "green"], [1, 5, 2])])
    out = report(compose_cfg(["data=jsonl", f"data.path={path}", "data.eval_fraction=0", "data.show_examples=1",
                              f"data.cache_dir={tmp_path / 'cache'}"]))
    assert "a ranked list of 3 responses, chosen = best, rejected = worst" in out
    assert f"response 1 (score 5, {len(ids('blue')) + 1} tokens): 'blue</s>'" in out
    assert "data[train]: 1 lists kept of 1 rows" in out
