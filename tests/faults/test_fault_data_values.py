"""Bad values inside rows: counted with file, line and field (or an error under data.strict), never a traceback.

NaN/infinite scores and weights, non-UTF-8 bytes and lone surrogates, roles the chat template does not know,
responses that differ only in surrounding whitespace, empty and null contents, and a JSON array in a .jsonl file.
Every source kind (JSONL, JSON, Parquet, CSV, a folder, a hub dataset) goes through the same checks.
"""

from __future__ import annotations

import json
import math

import pytest

from po.errors import DataError
from tests.helpers.data import TOK, load, write_jsonl

GOOD = {"prompt": "Q", "chosen": " yes", "rejected": " no"}
USER = {"role": "user", "content": "Tell me about tea."}


def uf(sc, sr) -> dict:
    return {"prompt": "Tell me about tea.", "chosen": [USER, {"role": "assistant", "content": "Tea is a drink."}],
            "rejected": [USER, {"role": "assistant", "content": "No."}], "score_chosen": sc, "score_rejected": sr}


def numbered(report, attr: str) -> list[str]:
    """'FILE line 3' -> '3' for each row of one report class."""
    return [w.rsplit(" ", 1)[1] for w in getattr(report, attr)]


def line_of(report, attr: str) -> str:
    """The report line of one class."""
    from po.data.quality import CLASSES

    text = next(text for a, text, _ in CLASSES if a == attr)
    return next(line for line in report.lines("train") if f"  {text}: " in line)


def strict_error(path, *overrides) -> str:
    with pytest.raises(DataError) as info:
        load(path, "data.strict=true", *overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- NaN and infinite numbers -------------------------------------------------------------------------------------

def test_nan_and_infinite_scores_are_dropped_even_with_a_margin_filter(tmp_path):
    """NaN passes `margin < min_score_margin` (every comparison with NaN is False): it must be caught first."""
    path = tmp_path / "uf.jsonl"
    lines = [json.dumps(uf(8, 3)), json.dumps(uf(math.nan, 3)), json.dumps(uf(8, math.inf)),
             json.dumps(uf(-math.inf, 3)), json.dumps(uf(7, 6.5))]
    assert "NaN" in lines[1] and "Infinity" in lines[2]  # what json.dumps (and many exporters) write
    write_jsonl(path, lines)
    for overrides in ([], ["data.min_score_margin=1"]):
        report = load(path, *overrides).reports["train"]
        assert numbered(report, "not_finite") == ["2", "3", "4"], overrides
        assert report.fields == {f"{path} line 2": "score_chosen", f"{path} line 3": "score_rejected",
                                 f"{path} line 4": "score_chosen"}
        assert report.kept == (1 if overrides else 2)
        assert report.as_dict()["not_finite"] == 3
    line = line_of(report, "not_finite")
    assert line.endswith(f"3 (first: {path} line 2 field 'score_chosen', line 3 field 'score_rejected', "
                         "line 4 field 'score_chosen')")
    message = strict_error(path)
    assert message.startswith(f"{path} line 2, field 'score_chosen': data.strict=true and 3 train row(s) "
                              "score or weight not a finite number")


def test_null_score_is_a_malformed_row_not_a_traceback(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [uf(8, 3), uf(None, 3)])
    report = load(path, "data.min_score_margin=1").reports["train"]
    assert numbered(report, "malformed") == ["2"] and report.fields[f"{path} line 2"] == "score_chosen"


def test_nan_infinite_and_null_weights_are_dropped(tmp_path):
    path = tmp_path / "w.jsonl"
    write_jsonl(path, [json.dumps({**GOOD, "w": 1.5}), json.dumps({**GOOD, "w": math.nan}),
                       json.dumps({**GOOD, "w": -math.inf}), json.dumps({**GOOD, "w": None})])
    data = load(path, "data.extra_columns.weight=w")
    report = data.reports["train"]
    assert numbered(report, "not_finite") == ["2", "3"] and numbered(report, "malformed") == ["4"]
    assert {report.fields[w] for w in report.not_finite + report.malformed} == {"w"}
    assert data.train["weight"] == [1.5]
    assert strict_error(path, "data.extra_columns.weight=w").startswith(  # the first class in the report's order
        f"{path} line 4, field 'w': data.strict=true and 1 train row(s) malformed row")


# --- text that is not UTF-8 ---------------------------------------------------------------------------------------

def test_non_utf8_byte_in_jsonl_is_dropped_with_its_field(tmp_path):
    """A latin-1 byte inside a string value: today a UnicodeDecodeError traceback."""
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'{"prompt": "Q", "chosen": " yes", "rejected": " no"}\n'
                     b'{"prompt": "Q", "chosen": " caf\xe9", "rejected": " no"}\n'
                     b'{"prompt": "Q\xff", "chosen": " a", "rejected": " b"}\n')
    report = load(path).reports["train"]
    assert numbered(report, "bad_text") == ["2", "3"] and report.kept == 1
    assert report.fields == {f"{path} line 2": "chosen", f"{path} line 3": "prompt"}
    assert strict_error(path).startswith(f"{path} line 2, field 'chosen': data.strict=true and 2 train row(s) "
                                         "text not valid UTF-8")


def test_lone_surrogates_are_dropped(tmp_path):
    r"""JSON allows "\ud800" escapes; the tokenizer cannot encode them (today a TypeError traceback)."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "Q", "chosen": " yes", "rejected": " no"}\n'
                    '{"prompt": "Q", "chosen": " bad \\ud800 text", "rejected": " no"}\n'
                    '{"prompt": [{"role": "user", "content": "hi \\udc00"}], '
                    '"chosen": [{"role": "assistant", "content": "a"}], '
                    '"rejected": [{"role": "assistant", "content": "b"}]}\n')
    report = load(path).reports["train"]
    assert numbered(report, "bad_text") == ["2", "3"]
    assert report.fields == {f"{path} line 2": "chosen", f"{path} line 3": "prompt"}


def test_byte_order_mark_is_skipped_and_a_bad_byte_outside_strings_is_malformed_json(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert load(bom).reports["train"].kept == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "Q",\xff "chosen": " a", "rejected": " b"}\n')
    with pytest.raises(DataError, match=rf"^{bad} line 2: malformed JSON \("):
        load(bad)


def test_non_utf8_in_a_json_file_is_dropped_by_item(tmp_path):
    path = tmp_path / "b.json"
    path.write_bytes(b'[{"prompt": "Q", "chosen": " yes", "rejected": " no"},\n'
                     b' {"prompt": "Q", "chosen": " yes", "rejected": " n\xf6"}]')
    report = load(path).reports["train"]
    assert report.bad_text == [f"{path} item 2"] and report.fields[f"{path} item 2"] == "rejected"


def test_non_utf8_in_a_csv_file_is_one_line_naming_the_line(tmp_path):
    """The CSV reader decodes the whole file: the line is named and re-encoding is the fix."""
    path = tmp_path / "b.csv"
    path.write_bytes(b"prompt,chosen,rejected\nQ,yes,no\nQ,caf\xe9,no\n")
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 3: not valid UTF-8 (byte 0xe9 at column 6)") and "\n" not in message
    assert "UTF-8" in message and "iconv" in message


# --- roles --------------------------------------------------------------------------------------------------------

def test_unknown_role_is_dropped_with_a_permissive_template(tmp_path):
    """The shipped template renders any role ('<|asistant|>'): a typo would train silently on a broken turn."""
    rows = [{"prompt": [USER], "chosen": [{"role": "assistant", "content": "Tea."}],
             "rejected": [{"role": "assistant", "content": "No."}]},
            {"prompt": [USER], "chosen": [{"role": "asistant", "content": "Tea."}],
             "rejected": [{"role": "assistant", "content": "No."}]},
            {"prompt": [{"role": "sytem", "content": "Be kind."}, USER],
             "chosen": [{"role": "assistant", "content": "Tea."}],
             "rejected": [{"role": "assistant", "content": "No."}]}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    report = load(path).reports["train"]
    assert numbered(report, "unknown_role") == ["2", "3"] and report.kept == 1
    assert report.fields == {f"{path} line 2": "chosen", f"{path} line 3": "prompt"}
    line = line_of(report, "unknown_role")
    assert "message role not known to the chat template" in line and "line 2 field 'chosen'" in line
    assert strict_error(path).startswith(f"{path} line 2, field 'chosen': data.strict=true")


def test_unknown_role_is_dropped_before_a_strict_template_raises(tmp_path, monkeypatch):
    strict = ("{% for m in messages %}{% if m['role'] == 'user' %}U:{{ m['content'] }}"
              "{% elif m['role'] == 'assistant' %}A:{{ m['content'] }}{{ eos_token }}"
              "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
              "{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    monkeypatch.setattr(TOK, "chat_template", strict)
    rows = [{"prompt": [USER], "chosen": [{"role": "assistant", "content": "Tea."}],
             "rejected": [{"role": "assistant", "content": "No."}]},
            {"prompt": [USER], "chosen": [{"role": "asistant", "content": "Tea."}],
             "rejected": [{"role": "assistant", "content": "No."}]}]
    report = load(write_jsonl(tmp_path / "r.jsonl", rows)).reports["train"]
    assert numbered(report, "unknown_role") == ["2"] and report.kept == 1


QWEN_LIKE = ("{%- for message in messages %}{%- if (message.role == \"user\") or (message.role == \"system\" and not "
             "loop.first) %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- elif message.role == "
             "\"tool\" %}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response><|im_end|>\n"
             "{%- endif %}{%- endfor %}")
LLAMA3_LIKE = ("{% for message in messages %}{% if message['role'] == 'ipython' %}{% set role = 'ipython' %}"
               "{% endif %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}"
               "<|eot_id|>{% endfor %}")
GEMMA_LIKE = ("{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
              "{% else %}{% set role = message['role'] %}{% endif %}<start_of_turn>{{ role }}\n"
              "{{ message['content'] }}<end_of_turn>\n{% endfor %}")
IN_LIST = "{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'function'] %}x{% endif %}{% endfor %}"


@pytest.mark.parametrize("template,extra", [(QWEN_LIKE, {"tool"}), (LLAMA3_LIKE, {"ipython"}),
                                            (GEMMA_LIKE, set()), (IN_LIST, {"function"}), (None, set())])
def test_template_roles_are_the_standard_three_plus_those_the_template_names(template, extra):
    from po.data.prepare import template_roles

    class Tok:
        chat_template = template

    assert template_roles(Tok()) == {"system", "user", "assistant"} | extra


def test_role_a_template_names_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(TOK, "chat_template", TOK.chat_template.replace(
        "{% for message in messages %}", "{% for message in messages %}{% if message['role'] == 'tool' %}{% endif %}"))
    rows = [{"prompt": [USER, {"role": "tool", "content": "42"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}]
    report = load(write_jsonl(tmp_path / "t.jsonl", rows)).reports["train"]
    assert report.kept == 1 and report.unknown_role == []


# --- whitespace, empty and null contents --------------------------------------------------------------------------

def test_responses_that_differ_only_in_surrounding_whitespace_are_dropped(tmp_path):
    rows = [GOOD, {"prompt": "Q", "chosen": " same", "rejected": "same\n"},
            {"prompt": [USER], "chosen": [{"role": "assistant", "content": "Tea. "}],
             "rejected": [{"role": "assistant", "content": " Tea."}]}]
    path = write_jsonl(tmp_path / "w.jsonl", rows)
    report = load(path).reports["train"]
    assert numbered(report, "whitespace_only") == ["2", "3"] and report.kept == 1
    assert report.fields[f"{path} line 2"] == "rejected"
    assert strict_error(path).startswith(f"{path} line 2, field 'rejected': data.strict=true")


def test_empty_after_strip_and_null_content_are_counted_with_their_field(tmp_path):
    """Null message content was a DataError for the whole file; it is a malformed row like a null cell."""
    rows = [GOOD, {"prompt": "Q", "chosen": " yes", "rejected": " \n\t "},
            {"prompt": [USER], "chosen": [{"role": "assistant", "content": None}],
             "rejected": [{"role": "assistant", "content": "b"}]},
            {"prompt": [USER], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "   "}]}]
    path = write_jsonl(tmp_path / "e.jsonl", rows)
    report = load(path).reports["train"]
    assert numbered(report, "empty") == ["2", "4"] and numbered(report, "malformed") == ["3"]
    assert report.fields == {f"{path} line 2": "rejected", f"{path} line 3": "chosen", f"{path} line 4": "rejected"}
    assert f"dropped, empty response: 2 (first: {path} line 2 field 'rejected', line 4 field 'rejected')" in \
        "\n".join(report.lines("train"))


# --- JSON arrays in .jsonl ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_in_a_jsonl_file_says_what_to_do(tmp_path, indent):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps([GOOD, GOOD], indent=indent) + "\n")
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: this .jsonl file holds one JSON array") and "\n" not in message
    assert "rename it to .json" in message and "one object per line" in message


def test_pretty_printed_object_in_a_jsonl_file_says_what_to_do(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps({"data": [GOOD]}, indent=2) + "\n")
    with pytest.raises(DataError, match=r"holds one JSON object spread over several lines.*rename it to \.json"):
        load(path)


# --- every source kind goes through the same checks ---------------------------------------------------------------

def _mixed_rows() -> list[dict]:
    return [{**GOOD, "score_chosen": 2.0, "score_rejected": 1.0},
            {**GOOD, "score_chosen": math.nan, "score_rejected": 1.0},
            {"prompt": "Q", "chosen": " same", "rejected": "same ", "score_chosen": 2.0, "score_rejected": 1.0}]


def test_parquet_and_csv_rows_get_the_same_checks(tmp_path):
    import datasets

    datasets.Dataset.from_list(_mixed_rows()).to_parquet(str(tmp_path / "m.parquet"))
    for name in ("m.parquet",):
        report = load(tmp_path / name, "data.format=ultrafeedback").reports["train"]
        assert numbered(report, "not_finite") == ["2"] and numbered(report, "whitespace_only") == ["3"]
    (tmp_path / "m.csv").write_text("prompt,chosen,rejected,w\nQ,yes,no,1\nQ,yes,no,inf\nQ,yes,no,nan\n")
    report = load(tmp_path / "m.csv", "data.extra_columns.weight=w").reports["train"]
    assert numbered(report, "not_finite") == ["2"] and report.fields[f"{tmp_path / 'm.csv'} row 2"] == "w"
    assert numbered(report, "malformed") == ["3"]  # the CSV reader reads 'nan' as an empty (null) cell


def test_folder_rows_get_the_same_checks(tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [json.dumps(uf(8, 3)), json.dumps(uf(math.nan, 3))])
    (folder / "b.jsonl").write_bytes(json.dumps(uf(8, 3)).replace("Tea is", "T\\u00e9a is").encode()
                                     + b"\n" + json.dumps(uf(8, 3)).replace("No.", "N\\ud800o.").encode() + b"\n")
    report = load(folder).reports["train"]
    assert report.not_finite == [f"{folder / 'a.jsonl'} line 2"]
    assert report.bad_text == [f"{folder / 'b.jsonl'} line 2"] and report.kept == 2


def test_hub_rows_get_the_same_checks(tmp_path, monkeypatch):
    """A hub dataset (offline here: datasets.load_dataset is replaced by a local table) is read row by row."""
    import datasets

    table = datasets.Dataset.from_list([uf(8, 3), uf(math.nan, 3)])
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: table)
    from po.data.load import load_preference_data
    from tests.helpers.runs import compose_cfg

    cfg = compose_cfg(["data=jsonl", "data.path=someorg/prefs", "data.eval_fraction=0",
                       f"data.cache_dir={tmp_path / 'cache'}"])
    report = load_preference_data(cfg.data, TOK, 0).reports["train"]
    assert report.not_finite == ["someorg/prefs[train] row 2"]
    assert report.fields["someorg/prefs[train] row 2"] == "score_chosen"
