"""Bad input: a one-line error naming file, row and field; or a dropped row that the report counts (strict: error)."""

from __future__ import annotations

import pytest

from po.errors import ConfigError, DataError
from tests.helpers.data import load, write_jsonl

GOOD = {"prompt": "Q", "chosen": " yes", "rejected": " no"}


def error_of(path, *overrides) -> str:
    with pytest.raises(DataError) as info:
        load(path, *overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_truncated_json_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [GOOD, GOOD, '{"prompt": "Q", "chosen": " yes", "rejec'])
    message = error_of(path)
    assert message.startswith(f"{path} line 3: malformed JSON (")
    assert "fix or remove the line" in message


def test_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [GOOD, {"prompt": "Q", "chosen": " yes", "other": " no"}])
    message = error_of(path)
    assert message.startswith(f"{path} line 2, field 'rejected': missing column")
    assert "columns present: chosen, other, prompt" in message and "data.columns.rejected=NAME" in message


def test_wrong_type(tmp_path):
    path = write_jsonl(tmp_path / "w.jsonl", [GOOD, GOOD, {"prompt": "Q", "chosen": 42, "rejected": " no"}])
    assert error_of(path) == (f"{path} line 3, field 'chosen': expected a string or a list of {{role, content}} "
                              "messages, got int")


def test_wrong_type_of_weight(tmp_path):
    path = write_jsonl(tmp_path / "w.jsonl", [{**GOOD, "w": "heavy"}])
    assert error_of(path, "data.extra_columns.weight=w") == (
        f"{path} line 1, field 'w': a per-pair weight must be a number, got str")


def test_no_common_prefix_messages(tmp_path):
    row = {"chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "x"}],
           "rejected": [{"role": "user", "content": "B"}, {"role": "assistant", "content": "y"}]}
    message = error_of(write_jsonl(tmp_path / "n.jsonl", [row]))
    assert message.startswith(f"{tmp_path / 'n.jsonl'} line 1, field 'chosen': chosen and rejected share no prompt")


def test_no_common_prefix_hh_text(tmp_path):
    row = {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}
    message = error_of(write_jsonl(tmp_path / "n.jsonl", [row]))
    assert message.startswith(f"{tmp_path / 'n.jsonl'} line 1, field 'chosen': chosen and rejected share no prompt "
                              "ending at an Anthropic-HH")


def test_empty_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("\n\n")
    assert error_of(path) == f"{path}: empty file: it holds no rows; check data.path"


def test_bad_data_config_is_one_line():
    from po.run.validate import validate
    from tests.helpers.runs import compose_cfg

    with pytest.raises(ConfigError, match=r"^data\.format=hh: use one of auto, explicit, implicit, ultrafeedback, ranked, ultrafeedback_raw, helpsteer2$"):
        validate(compose_cfg(["data.format=hh"]))
    with pytest.raises(ConfigError, match=r"^data\.mixture\[0\]\.weight=0: must be a number > 0"):
        validate(compose_cfg(["data.mixture=[{path: a.jsonl, weight: 0}]"]))


def problem_rows() -> list:
    long = " ".join(["word"] * 200)
    return [GOOD,
            {"prompt": "Q", "chosen": " same", "rejected": " same"},          # line 2: identical
            {"prompt": long, "chosen": " yes", "rejected": " no"},           # line 3: prompt fills max_length
            {"prompt": "Q", "chosen": "   ", "rejected": " no"},             # line 4: empty response
            {"prompt": "Q", "chosen": None, "rejected": " no"},              # line 5: null cell
            {"prompt": "Q", "chosen": " a" + long, "rejected": " b"}]        # line 6: truncated, kept


def test_dropped_rows_are_counted_with_their_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", problem_rows())
    data = load(path, "data.max_length=64", "data.max_prompt_length=null")
    report = data.reports["train"]
    assert (report.rows, report.kept) == (6, 2)
    assert [w.rsplit(" ", 1)[1] for w in report.identical] == ["2"]
    assert [w.rsplit(" ", 1)[1] for w in report.dropped_length] == ["3"]
    assert [w.rsplit(" ", 1)[1] for w in report.empty] == ["4"]
    assert [w.rsplit(" ", 1)[1] for w in report.malformed] == ["5"]
    assert [w.rsplit(" ", 1)[1] for w in report.truncated] == ["6"]
    assert max(len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in data.train) == 64
    lines = report.lines("train")
    assert lines[0].startswith("data[train]: 2 pairs kept of 6 rows")
    assert f"dropped, chosen identical to rejected (after truncation): 1 (first: {path} line 2)" in "\n".join(lines)
    assert report.as_dict()["identical"] == 1 and report.lengths["prompt"]["max"] >= 2


def test_strict_turns_a_dropped_row_into_an_error(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [GOOD, {"prompt": "Q", "chosen": " same", "rejected": " same"}])
    assert len(load(path, "data.strict=false").train) == 1
    message = error_of(path, "data.strict=true")
    assert message.startswith(f"{path} line 2: data.strict=true and 1 train row(s) chosen identical to rejected")
    assert "set data.strict=false" in message


def test_strict_accepts_clean_data_and_the_margin_filter(tmp_path):
    user = {"role": "user", "content": "Q"}
    rows = [{"prompt": "Q", "chosen": [user, {"role": "assistant", "content": c}],
             "rejected": [user, {"role": "assistant", "content": "r"}], "score_chosen": s, "score_rejected": 1}
            for c, s in (("a", 5), ("b", 1.5))]
    data = load(write_jsonl(tmp_path / "u.jsonl", rows), "data.strict=true", "data.min_score_margin=1")
    assert len(data.train) == 1
