"""Damaged and unwritable caches: a bad entry is reported with its path, recomputed and replaced, and the run equals
a run on a clean cache; a cache that cannot be written leaves nothing partial (po-train warns, po-cache-ref fails).

Both caches are tested at every point where their guarantee can break: an entry truncated, an entry with bytes
flipped inside its data (it still loads without the checksum), an entry written without a checksum (the previous
format), a disk that fills while writing, and a read-only folder.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from po.data import cache as data_cache
from tests.helpers.fs import files_in, full_tmpfs, read_only_tmpfs
from tests.helpers.runs import REPO, read_metrics, run_train

pytestmark = pytest.mark.slow
TOL = 1e-6
JOB = ["trainer.max_steps=4", "trainer.logging_steps=1", "data.max_rows=40", "data.max_length=64",
       "eval.before_training=false", "reference=cached"]


def job(ref_dir: Path, data_dir: Path) -> list[str]:
    return JOB + [f"reference.dir={ref_dir}", f"data.cache_dir={data_dir}"]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One run that fills both caches: (folder holding ref/ and data/, its per-step losses)."""
    root = tmp_path_factory.mktemp("clean")
    summary = run_train(root / "run", job(root / "ref", root / "data"))
    assert summary["reference_cache"]["hit"] is False and summary["data"]["train"]["kept"] > 0
    return root, losses(root / "run")


def copy_caches(clean_root: Path, dest: Path) -> tuple[Path, Path]:
    shutil.copytree(clean_root / "ref", dest / "ref")
    shutil.copytree(clean_root / "data", dest / "data")
    return dest / "ref", dest / "data"


def assert_same_losses(run_dir: Path, expected: list[float]) -> None:
    got = losses(run_dir)
    assert len(got) == len(expected) == 4
    assert max(abs(a - b) for a, b in zip(got, expected)) <= TOL, (got, expected)


def one_warning(caplog, path: Path) -> str:
    found = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(path) in r.getMessage()]
    assert len(found) == 1, found
    assert "\n" not in found[0]
    return found[0]


# --- the reference log-prob cache ---------------------------------------------------------------------------------

def _flip_reference_values(path: Path) -> None:
    """Overwrite 4 values in the middle of the stored `chosen` log-probs: the file still loads, with wrong values."""
    table = torch.load(path, weights_only=True)
    needle = table["chosen"].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, "the tensor's bytes are stored uncompressed in torch's zip format"
    middle = at + (len(needle) // 8) * 4
    data[middle:middle + 16] = np.full(4, 3.0, dtype=np.float32).tobytes()
    path.write_bytes(bytes(data))
    damaged = torch.load(path, weights_only=True)["chosen"]  # loads without complaint: only a checksum tells
    assert not torch.equal(damaged, table["chosen"])


def _drop_reference_checksum(path: Path) -> None:
    table = torch.load(path, weights_only=True)
    table.pop("sha256", None)
    torch.save(table, path)  # what the previous format wrote: the same table without a checksum


REFERENCE_DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "flipped": _flip_reference_values,
    "no_checksum": _drop_reference_checksum,
}


@pytest.mark.parametrize("damage", sorted(REFERENCE_DAMAGE))
def test_damaged_reference_cache_is_reported_recomputed_and_replaced(clean, tmp_path, caplog, damage):
    from po.run.refcache import read_table

    ref_dir, data_dir = copy_caches(clean[0], tmp_path)
    [entry] = list(ref_dir.glob("*.pt"))
    clean_table = torch.load(entry, weights_only=True)
    REFERENCE_DAMAGE[damage](entry)
    caplog.set_level(logging.WARNING)
    summary = run_train(tmp_path / "run", job(ref_dir, data_dir))
    message = one_warning(caplog, entry)
    assert message.startswith(f"reference cache {entry} ") and "recomputing and replacing it" in message
    assert summary["reference_cache"] == {"path": str(entry), "hit": False, "written": True}
    assert summary["models_loaded"] == 2  # the reference model was loaded to recompute the values
    replaced = read_table(entry, entry.stem)
    assert replaced is not None and torch.equal(replaced["chosen"], clean_table["chosen"])
    assert [p.name for p in ref_dir.iterdir()] == [entry.name]
    assert_same_losses(tmp_path / "run", clean[1])


def test_reference_cache_on_a_full_disk_warns_and_trains_from_memory(clean, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with full_tmpfs(tmp_path / "small") as small:
        summary = run_train(tmp_path / "run", job(small / "ref", tmp_path / "data"))
        assert files_in(small) == ["ref"]  # the folder, no partial or temporary file
    message = one_warning(caplog, small / "ref")
    assert message.startswith(f"reference cache not written: cannot write {small / 'ref'}/")
    assert "No space left on device" in message
    assert summary["reference_cache"]["written"] is False
    assert_same_losses(tmp_path / "run", clean[1])


def test_reference_cache_in_a_read_only_folder_warns_and_trains_from_memory(clean, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with read_only_tmpfs(tmp_path / "ro") as ro:
        run_train(tmp_path / "run", job(ro / "ref", tmp_path / "data"))
        assert files_in(ro) == []
    assert "Read-only file system" in one_warning(caplog, ro / "ref")
    assert_same_losses(tmp_path / "run", clean[1])


def test_po_cache_ref_on_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path):
    with full_tmpfs(tmp_path / "small") as small:
        proc = subprocess.run(
            [sys.executable, "-m", "po.cli.cache_ref", "data.max_rows=20", "data.max_length=64",
             f"reference.dir={small}", f"data.cache_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'h'}"],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
            env={**__import__("os").environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
        left = files_in(small)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith(f"po-cache-ref: error: could not write {small}/"), proc.stderr
    assert "No space left on device" in errors[0]
    assert left == []


# --- the tokenized-data cache -------------------------------------------------------------------------------------

def _arrow_file(entry: Path) -> Path:
    [arrow] = list(entry.glob("*.arrow"))
    return arrow


def _flip_token_ids(entry: Path) -> None:
    """Change one token id in the middle of the stored chosen responses: the entry still loads, with other ids."""
    import datasets

    before = list(datasets.load_from_disk(str(entry))["chosen_ids"])
    ids = np.concatenate([np.asarray(x, dtype="<i4") for x in before])
    arrow = _arrow_file(entry)
    data = bytearray(arrow.read_bytes())
    at = data.find(ids.tobytes())
    assert at >= 0, "the list values are stored contiguously in the arrow file"
    i = len(ids) // 2
    other = next(int(v) for v in ids if v != ids[i])
    data[at + 4 * i: at + 4 * i + 4] = np.asarray([other], dtype="<i4").tobytes()
    arrow.write_bytes(bytes(data))
    after = list(datasets.load_from_disk(str(entry))["chosen_ids"])  # loads without complaint: only a checksum tells
    assert after != before and len(after) == len(before)


DATA_DAMAGE = {
    "truncated": lambda e: _arrow_file(e).write_bytes(_arrow_file(e).read_bytes()[: _arrow_file(e).stat().st_size // 2]),
    "flipped": _flip_token_ids,
    "no_manifest": lambda e: (e / data_cache.MANIFEST).unlink(),
}


@pytest.mark.parametrize("damage", sorted(DATA_DAMAGE))
def test_damaged_tokenized_cache_is_reported_recomputed_and_replaced(clean, tmp_path, caplog, damage):
    ref_dir, data_dir = copy_caches(clean[0], tmp_path)
    [entry] = [p for p in data_dir.iterdir() if not p.name.startswith(".")]
    DATA_DAMAGE[damage](entry)
    assert data_cache.problem(entry) is not None
    caplog.set_level(logging.WARNING)
    summary = run_train(tmp_path / "run", job(ref_dir, data_dir))
    message = one_warning(caplog, entry)
    assert message.startswith(f"tokenized-data cache entry {entry} ") and "tokenizing again and replacing it" in message
    assert summary["reference_cache"]["hit"] is True  # same tokens again: the reference values still match
    assert data_cache.problem(entry) is None  # replaced by a whole, verified entry
    assert [p.name for p in data_dir.iterdir()] == [entry.name]
    assert_same_losses(tmp_path / "run", clean[1])


def test_tokenized_cache_on_a_full_disk_warns_and_trains_uncached(clean, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with full_tmpfs(tmp_path / "small") as small:
        run_train(tmp_path / "run", job(tmp_path / "ref", small))
        assert files_in(small) == []
    message = one_warning(caplog, small)
    assert message.startswith(f"tokenized-data cache not written: cannot write {small}/")
    assert "No space left on device" in message and "continues without it" in message
    assert_same_losses(tmp_path / "run", clean[1])


def test_tokenized_cache_in_a_read_only_folder_warns_and_trains_uncached(clean, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with read_only_tmpfs(tmp_path / "ro") as ro:
        run_train(tmp_path / "run", job(tmp_path / "ref", ro / "tokenized"))
        assert files_in(ro) == []
    assert "Read-only file system" in one_warning(caplog, ro / "tokenized")
    assert_same_losses(tmp_path / "run", clean[1])


def test_tokenized_cache_replacement_is_never_seen_half_written(tmp_path, monkeypatch):
    """While a bad entry is being replaced, a concurrent reader still sees the old (bad) entry and rejects it; the
    new one appears whole, after its manifest."""
    import datasets

    from tests.helpers.data import load, write_jsonl

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "chosen": " yes", "rejected": " no"}
                                              for i in range(6)])
    load(path)
    [entry] = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    DATA_DAMAGE["truncated"](entry)
    seen_during_write = []
    real_save = datasets.Dataset.save_to_disk

    def save_and_read_concurrently(self, folder, **kwargs):
        real_save(self, folder, **kwargs)
        seen_during_write.append((data_cache.load(entry), data_cache.problem(entry)))  # a reader, mid-write

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_and_read_concurrently)
    data = load(path)
    assert data.reports["train"].cache == "miss" and len(data.train) == 6
    [(table, problem)] = seen_during_write
    assert table is None and "truncated" in problem  # the old entry, rejected: never the new, unsealed files
    assert data_cache.problem(entry) is None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [entry.name]  # no staged folder left


def test_killed_tokenized_cache_writer_leaves_no_entry(tmp_path):
    """A writer killed after the table's files and before the manifest leaves only its hidden staged folder."""
    from tests.helpers.data import write_jsonl

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"Q{i}", "chosen": " yes", "rejected": " no"}
                                              for i in range(6)])
    script = ("import os, sys\n"
              f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
              "import po.data.cache\n"
              "po.data.cache.seal = lambda folder: os._exit(9)\n"
              "from tests.helpers.data import load\n"
              f"load(__import__('pathlib').Path({str(path)!r}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 9, proc.stderr[-2000:]
    leftovers = list((tmp_path / "cache").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".") and leftovers[0].name.endswith(".tmp")
    from tests.helpers.data import load

    assert load(path).reports["train"].cache == "miss"  # no entry was visible: tokenized again, then stored
    assert load(path).reports["train"].cache == "hit"


def test_tokenized_cache_writer_that_loses_a_race_stays_quiet(tmp_path, monkeypatch, caplog):
    """Two runs miss at once: the one whose rename fails because the other's entry just appeared keeps that entry,
    with no warning (the rename is made to fail as it does in that race: ENOTEMPTY)."""
    import errno

    import datasets

    import po.atomic

    table = datasets.Dataset.from_dict({"prompt_ids": [[1, 2]], "chosen_ids": [[3]], "rejected_ids": [[4]]})
    winner = tmp_path / "winner"
    assert data_cache.store(winner, table)

    def lose_the_race(staged, final):
        shutil.copytree(winner, final)  # the other run's entry lands first
        raise OSError(errno.ENOTEMPTY, "Directory not empty")

    monkeypatch.setattr(po.atomic, "replace_dir", lose_the_race)
    caplog.set_level(logging.WARNING)
    entry = tmp_path / "cache" / "k"
    assert data_cache.store(entry, table) is False
    assert data_cache.problem(entry) is None and caplog.records == []
    assert [p.name for p in entry.parent.iterdir()] == ["k"]  # the staged copy is gone
