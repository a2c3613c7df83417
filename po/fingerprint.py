"""Fingerprints: the content hashes that decide whether something can be reused or trusted.

One module, so that each kind of fingerprint means one thing everywhere:

- `sha256_file` / `sha256_files`: a file's bytes, streamed (memory stays flat for a file of any size);
- `folder_manifest` / `manifest_problem`: every file of a folder with its size and sha256, and whether a folder
  still matches such a manifest (checkpoints, tokenized-data cache entries);
- `json_sha256`: a JSON-able value (settings, keys);
- `tokenizer_fingerprint`: what decides token ids (vocabulary and merges, pre/post-processing, special tokens,
  chat template);
- `rows_fingerprint`: raw data rows with their locations (the tokenized-data cache key);
- `pair_digest` / `pairs_fingerprint`: one tokenized pair's content id, and an order-independent hash of all
  tokenized pairs (the reference cache's lookup keys and data key).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch

_BLOCK = 1 << 23


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(files: Iterable[Path]) -> str:
    """One sha256 over several files, in name order, each prefixed by its name."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def json_sha256(value: Any) -> str:
    """sha256 of a JSON-able value, keys sorted (non-JSON values by their str)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def table_sha256(table: dict[str, Any]) -> str:
    """sha256 of a mapping's content in name order: tensors by dtype, shape and bytes (read in place, no copy),
    other values as JSON. The checksum of the reference-cache tables and the warm-up weights."""
    digest = hashlib.sha256()
    for name in sorted(table):
        value = table[name]
        digest.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _files(folder: Path, skip: frozenset[str]) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def folder_manifest(folder: str | Path, checksums: bool = True, skip: Iterable[str] = ()) -> dict[str, dict]:
    """{relative path: {"size": bytes, "sha256": hex}} of every file under `folder` (sha256 left out when
    `checksums` is false; files named in `skip`, such as the manifest itself, are not listed)."""
    out = {}
    for name, path in _files(Path(folder), frozenset(skip)).items():
        entry: dict[str, Any] = {"size": path.stat().st_size}
        if checksums:
            entry["sha256"] = sha256_file(path)
        out[name] = entry
    return out


def manifest_problem(folder: str | Path, listed: dict[str, dict], skip: Iterable[str] = (),
                     strict: bool = True) -> str | None:
    """None when every file `listed` is in `folder` with its size (and sha256, where listed), else what is wrong.
    `strict`: a file the manifest does not list is wrong too."""
    folder = Path(folder)
    present = _files(folder, frozenset(skip))
    names = sorted(set(listed) | set(present)) if strict else sorted(listed)
    for name in names:
        if name not in present:
            return f"{name} is missing"
        if name not in listed:
            return f"{name} is not listed in its manifest"
        try:
            size = present[name].stat().st_size
            if size != listed[name]["size"]:
                return f"{name} has {size} bytes, the manifest says {listed[name]['size']} (truncated or changed)"
            if "sha256" in listed[name] and sha256_file(present[name]) != listed[name]["sha256"]:
                return f"{name} does not match its sha256 in the manifest (corrupted)"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or type(exc).__name__})"
    return None


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the backend (vocabulary, merges, normalizer, pre- and post-processor, so also
    which special tokens encoding adds), the special tokens and their ids, and the chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer; a slow one has its vocabulary
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"class": type(tokenizer).__name__, "chat_template": tokenizer.chat_template,
             "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
             "special_ids": sorted(tokenizer.all_special_ids),
             "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]}
    return hashlib.sha256((body + json.dumps(extra, sort_keys=True, default=str)).encode()).hexdigest()


def rows_fingerprint(rows: Iterable[tuple[dict, str]]) -> str:
    """Hash of raw rows and where each came from (`(row, "file line N")` pairs), in order."""
    digest = hashlib.sha256()
    for row, where in rows:
        digest.update(json.dumps([where, row], sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def pair_digest(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> int:
    """A signed 64-bit content id of one tokenized pair (the lookup key of its cached reference values)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (prompt_ids, chosen_ids, rejected_ids):
        digest.update(len(part).to_bytes(4, "little"))
        digest.update(torch.tensor(part, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def response_digest(prompt_ids: list[int], response_ids: list[int]) -> int:
    """A signed 64-bit content id of one tokenized (prompt, response) of a ranked list (its cached values' key)."""
    return pair_digest(prompt_ids, response_ids, [])


def row_digest(row: dict[str, Any]) -> int:
    """The content id of a tokenized row: its pair digest, or for a ranked list one over every response and score."""
    if not row.get("response_ids"):
        return pair_digest(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
    digest = hashlib.blake2b(digest_size=8)
    for response in row["response_ids"]:
        digest.update(response_digest(row["prompt_ids"], response).to_bytes(8, "little", signed=True))
    digest.update(torch.tensor(row["scores"], dtype=torch.float64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def pairs_fingerprint(datasets: Iterable[Any]) -> str:
    """Order-independent hash of the tokenized pairs (and ranked lists) of all splits (sorted row digests)."""
    digests = sorted(row_digest(r) for ds in datasets if ds is not None for r in ds)
    return hashlib.sha256(torch.tensor(digests, dtype=torch.int64).numpy().tobytes()).hexdigest()
