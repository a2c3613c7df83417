"""po.atomic: a write is seen whole or not at all, and a failed write leaves nothing and says so in one line."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from po.atomic import WriteError, staged_dir, write_atomic, write_json_atomic, write_text_atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    write_text_atomic(target, "old")
    write_json_atomic(target, {"steps": 3})
    assert target.read_text() == '{\n  "steps": 3\n}\n'
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path):
    target = tmp_path / "table.pt"
    write_text_atomic(target, "old")

    def half_then_fail(fh):
        fh.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    with pytest.raises(WriteError, match=f"could not write {target}: .*PytorchStreamWriter"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_unwritable_folder_is_one_line_naming_the_path(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(WriteError) as err:
        write_text_atomic(blocker / "summary.json", "x")
    assert str(blocker / "summary.json") in str(err.value) and "\n" not in str(err.value)


def test_staged_dir_replaces_only_when_complete(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "weights").write_text("old")
    with pytest.raises(ZeroDivisionError):
        with staged_dir(final) as staged:
            (staged / "weights").write_text("new, half written")
            1 / 0
    assert (final / "weights").read_text() == "old" and _leftovers(tmp_path) == []
    with staged_dir(final) as staged:
        (staged / "weights").write_text("new")
    assert (final / "weights").read_text() == "new" and _leftovers(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs; skipped where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_one_line_and_gives_the_space_back(tiny_tmpfs):
    target = tiny_tmpfs / "big.bin"
    with pytest.raises(WriteError) as err:
        write_atomic(target, lambda fh: fh.write(b"x" * (1 << 20)))
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    assert "free space" in str(err.value) and list(tiny_tmpfs.iterdir()) == []
    with pytest.raises(WriteError, match="No space left"):
        with staged_dir(tiny_tmpfs / "model") as staged:
            (staged / "w").write_bytes(b"x" * (1 << 20))
    assert list(tiny_tmpfs.iterdir()) == []
