"""Writes that a reader sees whole or not at all, and that fail in one line leaving nothing behind.

Every file a run, a cache or a report writes goes through here. A file is written to a temporary name in its own
folder, flushed to disk and renamed over the target (`os.replace` is atomic on POSIX file systems), so a process
killed mid-write leaves the old file (or none) plus at most a hidden temporary file, never half a file. A folder
(`staged_dir`) is built under a temporary name beside its target and renamed into place when complete.

A write that fails (disk full, quota, read-only or missing folder, permissions) raises `WriteError`: one line that
names the path, the reason and what to do, after the temporary file or folder is removed so the space comes back.
`torch.save` reports a full disk as a `RuntimeError` without an errno; such errors are mapped by the free space left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from po.errors import POError

_HINTS = {
    errno.ENOSPC: "free space on that file system (or point the output elsewhere), then run the same command again",
    errno.EDQUOT: "free space within your quota (or point the output elsewhere), then run the same command again",
    errno.EROFS: "that file system is read-only: choose a writable folder",
    errno.EACCES: "you may not write there: choose a writable folder or fix its permissions",
    errno.EPERM: "you may not write there: choose a writable folder or fix its permissions",
    errno.ENOENT: "its folder does not exist (was it removed while running?)",
}
# Below this many free bytes, a write error without an errno (torch.save's RuntimeError) is taken as a full disk.
_NEARLY_FULL = 1 << 20


class WriteError(POError):
    """A file or folder could not be written; the message names it. Nothing partial was left behind."""

    def __init__(self, path: Path, reason: str, code: int | None = None):
        self.path, self.reason, self.errno = Path(path), reason, code
        hint = _HINTS.get(code or -1, "fix the cause and run the same command again")
        super().__init__(f"could not write {path}: {reason}; {hint}")


def write_failure(path: str | os.PathLike, exc: BaseException) -> WriteError:
    """The one-line `WriteError` for `exc` raised while writing `path` (an OSError, or torch's RuntimeError)."""
    if isinstance(exc, WriteError):
        return exc
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if code is None and _nearly_full(Path(path)):
        code, reason = errno.ENOSPC, os.strerror(errno.ENOSPC)
    return WriteError(Path(path), reason, code)


def _io_error_types() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return OSError, RuntimeError, SafetensorError  # torch.save: RuntimeError; safetensors: its own error


def io_failure(path: str | os.PathLike, exc: BaseException) -> WriteError | None:
    """The one-line `WriteError` naming `path` when `exc` is a failed write (disk full, quota, read-only,
    permissions), else None: torch.save and safetensors report a full disk without an OSError."""
    if not isinstance(exc, _io_error_types()):
        return None
    if isinstance(exc, OSError):
        return write_failure(path, exc)
    code = re.search(r"os error (\d+)", str(exc))  # safetensors: "I/O error: No space left on device (os error 28)"
    if code:
        return WriteError(Path(path), os.strerror(int(code[1])), int(code[1]))
    failure = write_failure(path, exc)  # torch.save's RuntimeError: taken as a full disk when there is no space
    return failure if failure.errno is not None else None


def _nearly_full(path: Path) -> bool:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free < _NEARLY_FULL
            except OSError:
                return False
    return False


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`; `WriteError` on failure."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise write_failure(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(value, indent=indent) + "\n")


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final` (atomically when `final` does
    not exist; else the old folder is renamed aside first and removed after). On any error the temporary folder is
    removed, `final` is left as it was, and an I/O error becomes a one-line `WriteError` naming `final`."""
    final = Path(final)
    staged = _temporary_name(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.mkdir()
        yield staged
        replace_dir(staged, final)
    except (OSError, RuntimeError) as exc:
        raise write_failure(final, exc) from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def replace_dir(staged: Path, final: Path) -> None:
    """Rename the complete folder `staged` to `final`, replacing an older `final` (kept aside until the rename)."""
    if final.exists():
        old = _temporary_name(final)
        os.replace(final, old)
        try:
            os.replace(staged, final)
        except OSError:
            os.replace(old, final)  # put the previous folder back: nothing the user had is lost
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders that writers killed mid-write left in `folder`; return them.

    Only for a folder this process owns (a locked run directory): in a shared folder (a cache) another process's
    temporary file may be a write in progress."""
    folder = Path(folder)
    removed = []
    for leftover in folder.glob(".*.tmp") if folder.is_dir() else []:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                leftover.unlink()
        removed.append(leftover)
    return removed
