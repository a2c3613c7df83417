"""Sources and preparation: tokenization cache reuse, train/eval split by fraction, weighted mixtures, po-data."""

from __future__ import annotations

import subprocess
import sys

import po.data.prepare as prepare
from po.data import cache
from tests.helpers.data import load, write_jsonl
from tests.helpers.runs import compose_cfg


def rows(n: int, tag: str = "") -> list[dict]:
    return [{"prompt": f"Question {tag}{i}?", "chosen": f" Answer {i}.", "rejected": " No."} for i in range(n)]


def test_second_run_reuses_the_cache_and_max_length_invalidates_it(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", rows(8))
    start = prepare.TOKENIZE_RUNS
    first = load(path, "data.max_length=64")
    assert prepare.TOKENIZE_RUNS == start + 1 and first.reports["train"].cache == "miss"
    second = load(path, "data.max_length=64", "data.eval_fraction=0.25", seed=3)  # split and seed: same cache
    assert prepare.TOKENIZE_RUNS == start + 1 and second.reports["train"].cache == "hit"
    assert list(second.train["chosen_ids"]) + list(second.eval["chosen_ids"]) != []
    third = load(path, "data.max_length=32")
    assert prepare.TOKENIZE_RUNS == start + 2 and third.reports["train"].cache == "miss"
    write_jsonl(path, rows(8, tag="edited "))  # new content, same file name: re-tokenized
    load(path, "data.max_length=64")
    assert prepare.TOKENIZE_RUNS == start + 3


def test_a_cache_hit_leaves_the_entry_as_it_was(tmp_path):
    """Reading an entry writes nothing into it, so every later run is a hit as well. (datasets used to put its own
    cache files for `select`/`flatten_indices` into the entry's folder; the manifest does not list them, so every
    other run saw a damaged entry, warned and tokenized again, and ranks reading it replaced each other's entry.)"""


    path = write_jsonl(tmp_path / "c.jsonl", rows(8))
    load(path, "data.eval_fraction=0.25")
    [entry] = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    files = sorted(p.name for p in entry.iterdir())
    start = prepare.TOKENIZE_RUNS
    for _ in range(3):
        assert load(path, "data.eval_fraction=0.25").reports["train"].cache == "hit"
    assert prepare.TOKENIZE_RUNS == start
    assert sorted(p.name for p in entry.iterdir()) == files and cache.problem(entry) is None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [entry.name]


def test_cache_hit_gives_the_same_records(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", rows(6))
    a = load(path, "data.max_length=20")
    b = load(path, "data.max_length=20")
    c = load(path, "data.max_length=20", "data.cache=false")
    assert b.reports["train"].cache == "hit" and c.reports["train"].cache == ""
    assert a.train.to_list() == b.train.to_list() == c.train.to_list()


def test_eval_fraction_split_is_fixed_by_seed_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", rows(40))
    a = load(path, "data.eval_fraction=0.25", seed=1)
    b = load(path, "data.eval_fraction=0.25", seed=1)
    c = load(path, "data.eval_fraction=0.25", seed=2)
    assert (len(a.train), len(a.eval)) == (30, 10)
    assert a.wheres["eval"] == b.wheres["eval"] != c.wheres["eval"]
    assert not set(a.wheres["eval"]) & set(a.wheres["train"])


def test_mixture_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", rows(10, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", rows(10, "b"))
    data = load(a, f"data.mixture=[{{path: '{a}', weight: 2}}, {{path: '{b}', weight: 0.5}}]")
    sources = [w.split(" line ")[0] for w in data.wheres["train"]]
    assert sources.count(str(a)) == 20 and sources.count(str(b)) == 5
    assert len(set(w for w in data.wheres["train"] if w.startswith(str(b)))) == 5
    assert data.train["row_id"] == list(range(25))


def test_num_proc_gives_the_same_records(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", rows(12))
    one = load(path, "data.cache=false")
    two = load(path, "data.cache=false", "data.num_proc=2")
    assert one.train.to_list() == two.train.to_list()


def test_length_statistics_in_the_report(tmp_path):
    data = load(write_jsonl(tmp_path / "l.jsonl", [{"prompt": "Q", "chosen": " a b c", "rejected": " a"}] * 3))
    lengths = data.reports["train"].as_dict()["lengths"]
    chosen, rejected = len(data.train[0]["chosen_ids"]), len(data.train[0]["rejected_ids"])
    assert lengths["chosen_minus_rejected"]["mean"] == chosen - rejected > 0
    assert lengths["chosen_minus_rejected"]["chosen_longer_fraction"] == 1.0
    assert lengths["prompt"]["max"] == len(data.train[0]["prompt_ids"])


def test_summary_facts_carry_the_data_report(tmp_path):
    from po.run.build import build_trainer

    cfg = compose_cfg(["data.max_rows=40", "trainer.max_steps=1", f"data.cache_dir={tmp_path / 'cache'}"])
    _, _, facts = build_trainer(cfg, tmp_path)
    assert facts["data"]["train"]["kept"] == 36 and facts["data"]["eval"]["kept"] == 4
    assert set(facts["data"]["train"]["lengths"]) >= {"prompt", "response", "chosen_minus_rejected"}


def test_po_data_command_prints_report_and_examples(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", rows(5) + [{"prompt": "Q", "chosen": " same", "rejected": " same"}])
    out = subprocess.run(
        [sys.executable, "-m", "po.cli.data", "data=jsonl", f"data.path={path}", "data.show_examples=2", "data.eval_fraction=0",
         f"data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "data[train]: 5 pairs kept of 6 rows" in out.stdout
    assert f"chosen identical to rejected (after truncation): 1 (first: {path} line 6)" in out.stdout
    assert "tokens: prompt mean" in out.stdout
    assert out.stdout.count("⟦|⟧ ' Answer 0.</s>'") == 1 and "example 1 (" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "po.cli.data", "data=jsonl", f"data.path={path}", "data.strict=true",
                          f"data.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith(f"po-data: error: {path} line 6: data.strict=true")


def test_hub_id_offline_error_names_the_dataset_and_split():
    import pytest

    from po.data.sources import read_rows
    from po.errors import POError

    with pytest.raises(POError, match=r"^data\.path=someorg/not-there: could not load this Hugging Face dataset "
                                      r"\(split 'test'\).*If this machine is offline"):
        read_rows("someorg/not-there", None, "test")


def test_data_mixture_option_composes_and_loads(tmp_path):
    from po.data.load import load_preference_data
    from po.run.validate import validate
    from tests.helpers.data import TOK

    a = write_jsonl(tmp_path / "a.jsonl", rows(4, "a"))
    cfg = compose_cfg(["data=mixture", f"data.mixture=[{{path: '{a}', weight: 1.5}}]", "data.eval_fraction=0.25",
                       f"data.cache_dir={tmp_path / 'cache'}"])
    validate(cfg)
    data = load_preference_data(cfg.data, TOK, 0)
    # 4 rows: 1 held out (0.25), 3 for training, weight 1.5 = all 3 once + a random half (round(1.5) = 2)
    assert (len(data.train), len(data.eval)) == (5, 1)
