"""Read raw rows from local files (JSONL, JSON, Parquet, CSV, or a folder of them) or a Hugging Face dataset id.

Every row comes with `where`, a human-readable location ("data.jsonl line 12") used in error messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from po.errors import DataError, POError

BUILTIN = {"builtin:toy": lambda: __import__("po.data.toy", fromlist=["TOY_PATH"]).TOY_PATH}
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

Row = tuple[dict[str, Any], str]


def read_rows(path: str, name: str | None = None, split: str = "train") -> list[Row]:
    """All rows of `path`: a builtin name, a file, a folder of files, or a Hugging Face dataset id."""
    if path in BUILTIN:
        path = str(BUILTIN[path]())
    local = Path(path).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.suffix in SUFFIXES)
        if not files:
            raise POError(f"data.path={path}: the folder holds no {'/'.join(SUFFIXES)} files")
        rows = [row for f in files for row in _read_file(f)]
        if not rows:
            raise DataError(str(local), "the folder's files hold no rows; check data.path")
        return rows
    if local.is_file():
        rows = list(_read_file(local))
        if not rows:
            raise DataError(str(local), "empty file: it holds no rows; check data.path")
        return rows
    if local.suffix in SUFFIXES or path.startswith((".", "/", "~")):
        raise POError(f"data.path={path}: no such file or folder")
    return _read_hub(path, name, split)


def _read_file(path: Path) -> Iterator[Row]:
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif path.suffix == ".json":
        yield from _read_json(path)
    elif path.suffix in (".parquet", ".csv"):
        import datasets

        builder = "parquet" if path.suffix == ".parquet" else "csv"
        try:
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:  # pyarrow's errors are long; keep the first line
            raise POError(f"{path}: cannot read as {builder}: {str(exc).splitlines()[0]}") from exc
        for i, row in enumerate(table):
            yield row, f"{path} row {i + 1}"
    else:
        raise POError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(where, f"malformed JSON ({exc.msg} at column {exc.colno}); fix or remove the line")
            if not isinstance(row, dict):
                raise DataError(where, f"expected a JSON object, got {type(row).__name__}")
            yield row, where


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}", f"malformed JSON ({exc.msg}); fix the file")
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} or {"train": [...]}
    if not isinstance(data, list):
        raise DataError(str(path), "expected a list of objects (or one key holding that list)")
    for i, row in enumerate(data):
        where = f"{path} item {i + 1}"
        if not isinstance(row, dict):
            raise DataError(where, f"expected a JSON object, got {type(row).__name__}")
        yield row, where


def _read_hub(dataset_id: str, name: str | None, split: str) -> list[Row]:
    import datasets

    try:
        table = datasets.load_dataset(dataset_id, name, split=split)
    except Exception as exc:
        raise POError(
            f"data.path={dataset_id}: could not load this Hugging Face dataset (split '{split}'): "
            f"{str(exc).splitlines()[0]}. If this machine is offline, download it where there is network "
            "(it is then read from the cache) or point data.path at local files."
        ) from exc
    return [(row, f"{dataset_id}[{split}] row {i + 1}") for i, row in enumerate(table)]
