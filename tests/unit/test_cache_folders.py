"""Every on-disk cache (tokenized data, reference log-probs, the tiny model's warm-up, the judge's starting-model
samples) lives under one root: the cache's own `dir` setting when given, else `$PO_CACHE_DIR/<cache>`, else
`$XDG_CACHE_HOME/po/<cache>` (~/.cache by default). A multi-node job points them all at a shared file system with
one variable (slurm/README.md); a cache that ignored it was filled by each node on its own local disk."""

from pathlib import Path

import pytest

from po.data.prepare import default_cache_dir
from po.judge.cache import cache_dir as judge_dir
from po.models.warmup import cache_path as warmup_path
from po.run.refcache import cache_dir as reference_dir
from tests.helpers.runs import compose_cfg


def folders(overrides=()) -> dict[str, Path]:
    cfg = compose_cfg(["reference=cached", "judge=function", "judge.function=po.judge.toy.score", *overrides])
    return {"tokenized": Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(),
            "reference": reference_dir(cfg.reference), "judge": judge_dir(cfg.judge.get("dir")),
            "warmup": warmup_path(cfg.model, "k").parent}


@pytest.mark.parametrize("where", ["PO_CACHE_DIR", "XDG_CACHE_HOME"])
def test_one_variable_moves_every_cache(tmp_path, monkeypatch, where):
    monkeypatch.delenv("PO_CACHE_DIR", raising=False)
    monkeypatch.setenv(where, str(tmp_path))
    root = tmp_path if where == "PO_CACHE_DIR" else tmp_path / "po"
    assert folders() == {name: root / name for name in ("tokenized", "reference", "judge", "warmup")}


def test_a_cache_dir_setting_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("PO_CACHE_DIR", str(tmp_path / "env"))
    given = folders([f"data.cache_dir={tmp_path}/t", f"reference.dir={tmp_path}/r", f"judge.dir={tmp_path}/j",
                     f"model.warmup.dir={tmp_path}/w"])
    assert given == {"tokenized": tmp_path / "t", "reference": tmp_path / "r", "judge": tmp_path / "j",
                     "warmup": tmp_path / "w"}


def test_home_is_expanded(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    assert folders(["reference.dir='~/refs'"])["reference"] == Path("/home/someone/refs")
