"""Read raw rows from local files (JSONL, JSON, Parquet, CSV, or a folder of them) or a Hugging Face dataset id.

Every row comes with `where`, a human-readable location ("data.jsonl line 12") used in error messages.

JSON and JSONL text is decoded with errors="surrogateescape": a byte that is not UTF-8 becomes a lone surrogate in
the value that holds it, so normalization (po/data/formats.py) drops that row and names its field instead of the
whole file failing. A UTF-8 byte-order mark is skipped. CSV files are parsed whole by the CSV reader, so a byte that
is not UTF-8 there is an error naming its line.
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
        if builder == "csv":
            _check_utf8_lines(path)
        try:
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:  # pyarrow's errors are long; keep the first line
            raise POError(f"{path}: cannot read as {builder}: {str(exc).splitlines()[0]}") from exc
        for i, row in enumerate(table):
            yield row, f"{path} row {i + 1}"
    else:
        raise POError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        first = True
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            if first:
                _check_not_one_document(path, line)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(where, f"malformed JSON ({exc.msg} at column {exc.colno}); fix or remove the line")
            if first and isinstance(row, list):
                raise DataError(str(path), f"this .jsonl file holds one JSON array, {_ONE_PER_LINE}")
            if not isinstance(row, dict):
                raise DataError(where, f"expected a JSON object, got {type(row).__name__}")
            first = False
            yield row, where


_ONE_PER_LINE = ("not one JSON object per line; rename it to .json (a .json file may hold an array of objects) or "
                 "write one object per line")


def _check_not_one_document(path: Path, first_line: str) -> None:
    """A pretty-printed JSON document starts with a line that is only '[' or '{': say so instead of 'malformed'."""
    kind = {"[": "array", "{": "object"}.get(first_line.strip())
    if kind is not None:
        raise DataError(str(path), f"this .jsonl file holds one JSON {kind} spread over several lines, {_ONE_PER_LINE}")


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig", errors="surrogateescape"))
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


def _check_utf8_lines(path: Path) -> None:
    """One line naming the first line that is not UTF-8 (the CSV reader would fail on the whole file)."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path} line {line_no}",
                                f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); the CSV "
                                f"reader needs UTF-8: re-encode the file (e.g. iconv -f latin1 -t utf-8 "
                                f"{path.name} > {path.stem}.utf8.csv) or fix that line") from None


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
