"""Record which process writes which file: imported by every Python process that has this folder on PYTHONPATH.

Used by tests/helpers/writes.py (read that first). It does nothing unless PO_TRACE_WRITES (a folder for the trace)
and PO_TRACE_ROOTS (folders to watch, joined by os.pathsep) are set. Then a Python audit hook (PEP 578) appends one
line per write under a watched folder to PO_TRACE_WRITES/<host>-<pid>.tsv: the process's global RANK (read at the
event: submitit tasks set it after start-up), host, pid, the kind of write and the absolute path. Writes are opens
for writing (`open`, `os.open`: the lock file, logs, JSON files, temporary files), renames (how every atomic write
and staged folder reaches its final name) and folders made; a `start` line (path: the first watched folder)
says that the process ran, where, and with which RANK its launcher started it. Bytes written by C or Rust code straight to a path
(safetensors, pyarrow) are not seen, but they go into staged folders whose rename is.
"""

import os
import socket
import sys


def _install() -> None:
    out, roots = os.environ.get("PO_TRACE_WRITES"), os.environ.get("PO_TRACE_ROOTS")
    if not out or not roots:
        return
    watched = tuple(os.path.join(os.path.abspath(r), "") for r in roots.split(os.pathsep) if r)
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    host = socket.gethostname()
    trace = {"fd": None}

    def record(kind: str, path) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return  # an open file descriptor, not a path
        path = os.path.abspath(os.fspath(path))
        if kind != "start" and not path.startswith(watched):
            return
        if trace["fd"] is None:
            trace["fd"] = os.open(os.path.join(out, f"{host}-{os.getpid()}.tsv"),
                                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        line = f"{os.environ.get('RANK', '-')}\t{host}\t{os.getpid()}\t{kind}\t{path}\n"
        os.write(trace["fd"], line.encode())

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, _mode, flags = args
            if isinstance(flags, int) and flags & writing:
                record("open", path)
        elif event == "os.rename":
            record("rename", args[1])
        elif event == "os.mkdir":
            record("mkdir", args[0])

    def after_fork() -> None:
        trace["fd"] = None  # a forked child (data loader worker) writes its own file

    os.register_at_fork(after_in_child=after_fork)
    sys.addaudithook(hook)
    record("start", watched[0])  # every traced process leaves its host and launcher rank


_install()
