"""Each preference format from a small file the test writes; prompt and responses checked token by token.

Expected ids are built from the pieces the format should produce (e.g. HH: prompt = text up to and including the
last shared "\\n\\nAssistant:"), so a wrong boundary, a lost or doubled special token fails.
"""

from __future__ import annotations

import json

import pytest

from po.data.collate import PairCollator
from tests.helpers.data import TOK, ids, load, write_jsonl

BOS, EOS = TOK.bos_token_id, TOK.eos_token_id
USER, ASSISTANT = TOK.convert_tokens_to_ids("<|user|>"), TOK.convert_tokens_to_ids("<|assistant|>")


def chat_prompt(*turns: tuple[str, str]) -> list[int]:
    """Shipped template: <s> then <|role|>\\ncontent</s> per turn, then the generation prompt <|assistant|>\\n."""
    out = [BOS]
    for role, content in turns:
        out += [TOK.convert_tokens_to_ids(f"<|{role}|>")] + ids("\n" + content) + [EOS]
    return out + [ASSISTANT] + ids("\n")


def test_hh_text_implicit_prompt(tmp_path):
    shared = "\n\nHuman: What is a river?\n\nAssistant: Water that flows.\n\nHuman: Where to?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": shared + " To the sea.", "rejected": shared + " No idea."}])
    rec = load(path).train[0]
    assert rec["prompt_ids"] == [BOS] + ids(shared)
    assert TOK.decode(rec["prompt_ids"]).endswith("\n\nAssistant:")
    assert rec["chosen_ids"] == ids(" To the sea.") + [EOS]
    assert rec["rejected_ids"] == ids(" No idea.") + [EOS]


def test_hh_prompt_stops_at_the_last_shared_turn_boundary(tmp_path):
    """Both answers start with "Sure": the shared text runs past the boundary, the prompt must not."""
    base = "\n\nHuman: Help?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": base + " Sure, gladly.", "rejected": base + " Sure not."}])
    rec = load(path).train[0]
    assert rec["prompt_ids"] == [BOS] + ids(base)
    assert rec["chosen_ids"] == ids(" Sure, gladly.") + [EOS]


def test_implicit_message_lists(tmp_path):
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Name a fruit"}]
    row = {"chosen": convo + [{"role": "assistant", "content": "Apple"}],
           "rejected": convo + [{"role": "assistant", "content": "No"}]}
    rec = load(write_jsonl(tmp_path / "m.jsonl", [row])).train[0]
    assert rec["prompt_ids"] == chat_prompt(("user", "Hi"), ("assistant", "Hello"), ("user", "Name a fruit"))
    assert rec["chosen_ids"] == ids("Apple") + [EOS]
    assert rec["rejected_ids"] == ids("No") + [EOS]


def test_explicit_message_lists_and_strings(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go"}]},
        {"prompt": "Q: two plus two?\nA:", "chosen": " four", "rejected": " five"},
    ]
    data = load(write_jsonl(tmp_path / "e.jsonl", rows))
    messages, strings = data.train[0], data.train[1]
    assert messages["prompt_ids"] == chat_prompt(("user", "Hi"))
    assert messages["chosen_ids"] == ids("Hello") + [EOS]
    assert strings["prompt_ids"] == [BOS] + ids("Q: two plus two?\nA:")
    assert strings["chosen_ids"] == ids(" four") + [EOS] and strings["rejected_ids"] == ids(" five") + [EOS]


def uf_row(prompt: str, good: str, bad: str, sc: float, sr: float) -> dict:
    user = {"role": "user", "content": prompt}
    return {"prompt": prompt, "prompt_id": "x", "chosen": [user, {"role": "assistant", "content": good}],
            "rejected": [user, {"role": "assistant", "content": bad}], "score_chosen": sc, "score_rejected": sr}


def test_ultrafeedback_rows_and_score_margin(tmp_path):
    rows = [uf_row("Tell me about cats.", "Cats purr.", "No.", 8.0, 3.0),
            uf_row("Tell me about tea.", "Tea is a drink.", "Tea is hot.", 7.0, 6.5)]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    data = load(path)
    assert len(data.train) == 2
    assert data.train[0]["prompt_ids"] == chat_prompt(("user", "Tell me about cats."))
    assert data.train[0]["chosen_ids"] == ids("Cats purr.") + [EOS]
    filtered = load(path, "data.format=ultrafeedback",
                    "data.min_score_margin=1.0")
    assert len(filtered.train) == 1 and filtered.train[0]["chosen_ids"] == ids("Cats purr.") + [EOS]
    assert len(filtered.reports["train"].low_margin) == 1
    assert filtered.reports["train"].low_margin[0].endswith("uf.jsonl line 2")


def test_mapped_columns_and_carried_extras(tmp_path):
    rows = [{"question": "Why?", "good": " Because.", "bad": " No.", "who": "ann-b", "w": 0.5},
            {"question": "How?", "good": " Carefully.", "bad": " Badly.", "who": "ann-a", "w": 2}]
    path = write_jsonl(tmp_path / "mapped.jsonl", rows)
    data = load(path, "data.columns.prompt=question", "data.columns.chosen=good", "data.columns.rejected=bad",
                "data.extra_columns.annotator=who", "data.extra_columns.weight=w")
    first = data.train[0]
    assert first["prompt_ids"] == [BOS] + ids("Why?") and first["chosen_ids"] == ids(" Because.") + [EOS]
    assert data.annotator_ids == {"ann-a": 0, "ann-b": 1}
    assert [r["annotator"] for r in data.train] == [1, 0] and [r["weight"] for r in data.train] == [0.5, 2.0]
    batch = PairCollator(TOK.pad_token_id)([data.train[0], data.train[1]])
    assert batch["annotator"].tolist() == [1, 0] and batch["weight"].tolist() == [0.5, 2.0]
    assert batch["response_mask"][0].sum() == len(first["chosen_ids"])


def test_parquet_and_csv_sources(tmp_path):
    import datasets

    rows = [{"prompt": "Q1", "chosen": " a", "rejected": " b"}, {"prompt": "Q2", "chosen": " c", "rejected": " d"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "p.csv"), index=False)
    for name in ("p.parquet", "p.csv"):
        data = load(tmp_path / name)
        assert [r["chosen_ids"] for r in data.train] == [ids(" a") + [EOS], ids(" c") + [EOS]]


@pytest.mark.parametrize("fmt", ["explicit", "implicit"])
def test_forced_format_names_the_missing_column(tmp_path, fmt):
    """data.format=explicit needs a prompt column; implicit ignores one if present."""
    row = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    path = write_jsonl(tmp_path / "f.jsonl", [row])
    if fmt == "explicit":
        with pytest.raises(Exception, match=r"f\.jsonl line 1, field 'prompt': missing column"):
            load(path, "data.format=explicit")
    else:
        assert load(path, "data.format=implicit").train[0]["chosen_ids"] == ids(" b") + [EOS]


def test_row_locations_follow_the_rows(tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": " yes", "rejected": " no"} for i in range(3)]
    data = load(write_jsonl(tmp_path / "w.jsonl", rows))
    assert [w.rsplit(" ", 1)[1] for w in data.wheres["train"]] == ["1", "2", "3"]
    assert json.loads(json.dumps(data.reports["train"].as_dict()))["kept"] == 3


def test_folder_of_files_in_name_order(tmp_path):
    folder = tmp_path / "prefs"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "b.jsonl", [{"prompt": "Q", "chosen": " b", "rejected": " x"}])
    (folder / "sub" / "a.json").write_text(json.dumps({"data": [{"prompt": "Q", "chosen": " a", "rejected": " x"}]}))
    (folder / "notes.txt").write_text("not data")
    data = load(folder)  # the helper puts the cache beside the folder, not inside it
    assert [r["chosen_ids"] for r in data.train] == [ids(" b") + [EOS], ids(" a") + [EOS]]
    assert data.wheres["train"][1] == f"{folder / 'sub' / 'a.json'} item 1"
