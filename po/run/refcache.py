"""Reference log-probs computed once, stored on disk, and reused by every run with the same key (`reference=cached`).

The key is a hash of everything the values depend on:
  - the reference model: `model=tiny` -> architecture, sizes, dtype, seed and library versions (they generate the
    weights); `model=hf` -> path, dtype, and a content hash of its config and weight files;
  - the tokenizer: its serialized vocabulary/merges, chat template and special tokens;
  - the data: an order-independent fingerprint of the tokenized pairs (train and held-out);
  - every tokenization setting of the `data` group (max_length, max_prompt_length, ...).
A changed model, tokenizer, data or setting is a different file, so a stale cache is never read.

Pairs are looked up by a content digest of their token ids (`pair_keys`, added to each batch by `KeyedCollator`),
which survives shuffling and is unique across the train and held-out splits. Files are written to a temporary name
in the same folder and renamed into place (po.atomic): a killed writer leaves only a temporary file that no reader
opens, and a writer that finds a valid file for its key already there (a concurrent run) discards its copy.

Every table carries `sha256`, a checksum of its content (every tensor's dtype, shape and bytes, and the other
fields), recomputed and compared on every read. A file that does not load, fails the comparison (bytes flipped on
disk or in a copy), has no checksum (written by an older po) or belongs to another key is reported in one warning
line naming it, treated as a miss, recomputed and replaced. Verifying a table costs about 1 s per GB on top of
loading it (docs/performance.md). A file that cannot be written (disk full, read-only folder) is a warning for
`po-train`, which goes on with the values in memory, and an error for `po-cache-ref`, whose job is to write it.

Only losses whose `needs` are a subset of {"token_logps"} can use it (`po.config.validate` refuses the others).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from po.atomic import WriteError, write_atomic
from po.errors import POError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_DIR = "~/.cache/po/reference"
SERVED_NEEDS = frozenset({"token_logps"})
# data-group keys that only choose rows (the row fingerprint already covers them) or only say how to run (where the
# tokenized data is cached, how many processes tokenize, what po-data prints, errors instead of drops)
_ROW_SELECTION_KEYS = {"path", "name", "split", "eval_path", "eval_split", "eval_fraction", "max_rows",
                       "cache", "cache_dir", "num_proc", "show_examples", "strict"}


# --- identities -------------------------------------------------------------------------------------------------

def pair_digest(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> int:
    """A signed 64-bit content id of one tokenized pair (the lookup key of its cached values)."""
    h = hashlib.blake2b(digest_size=8)
    for part in (prompt_ids, chosen_ids, rejected_ids):
        h.update(len(part).to_bytes(4, "little"))
        h.update(torch.tensor(part, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def data_fingerprint(datasets: Iterable[Any]) -> str:
    """Order-independent hash of the tokenized pairs of all splits (sorted pair digests)."""
    digests = sorted(pair_digest(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"])
                     for ds in datasets if ds is not None for r in ds)
    return hashlib.sha256(torch.tensor(digests, dtype=torch.int64).numpy().tobytes()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"class": type(tokenizer).__name__, "chat_template": getattr(tokenizer, "chat_template", None),
             "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
             "ids": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]}
    return hashlib.sha256((body + json.dumps(extra, sort_keys=True, default=str)).encode()).hexdigest()


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
    return h.hexdigest()


def _model_dir(cfg: DictConfig) -> Path:
    path = Path(os.path.expanduser(str(cfg.name_or_path)))
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(cfg.name_or_path), revision=cfg.get("revision"), local_files_only=True))
    except Exception as exc:
        raise POError(f"reference=cached: model '{cfg.name_or_path}' is not a local folder nor in the Hugging Face "
                      f"cache, so its weights cannot be fingerprinted; download it first") from exc


def model_fingerprint(cfg: DictConfig, seed: int) -> dict[str, Any]:
    """What determines the reference weights (see the module docstring)."""
    import transformers

    common = {"kind": cfg.kind, "dtype": str(cfg.get("dtype")),
              "attn_implementation": str(cfg.get("attn_implementation"))}
    if cfg.kind == "tiny":
        return {**common, "architecture": cfg.architecture, "config": OmegaConf.to_container(cfg.config, resolve=True),
                "seed": seed, "torch": torch.__version__, "transformers": transformers.__version__}
    folder = _model_dir(cfg)
    files = [f for f in folder.iterdir() if f.is_file() and (
        f.name == "config.json" or f.suffix in {".safetensors", ".bin", ".pt", ".pth"} or f.name.endswith(".index.json"))]
    return {**common, "path": str(cfg.name_or_path), "files": _hash_files(files)}


def cache_key(cfg: DictConfig, tokenizer, datasets: Iterable[Any]) -> tuple[str, dict[str, Any]]:
    """(hex key, the parts it hashes) for this config, tokenizer and tokenized data."""
    data_settings = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
                     if k not in _ROW_SELECTION_KEYS}
    parts = {"format": CACHE_FORMAT, "model": model_fingerprint(cfg.model, cfg.seed),
             "tokenizer": tokenizer_fingerprint(tokenizer), "data": data_fingerprint(datasets),
             "tokenization": data_settings}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return key, parts


def cache_dir(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(str(cfg.reference.get("dir") or DEFAULT_DIR)))


# --- storage ----------------------------------------------------------------------------------------------------

def cache_path(directory: Path, key: str) -> Path:
    return Path(directory) / f"{key}.pt"


def table_checksum(table: dict[str, Any]) -> str:
    """sha256 of a table's content: every field but `sha256` in name order; tensors by dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(k for k in table if k != "sha256"):
        value = table[name]
        digest.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy())  # the tensor's own memory: no copy
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _problem(table: Any, key: str) -> str | None:
    """None when `table` is a valid table for `key`, else what is wrong with it (a phrase)."""
    if not isinstance(table, dict):
        return f"holds a {type(table).__name__}, not a cache table"
    if "sha256" not in table:
        return "has no checksum (written by an older po)"
    if table_checksum(table) != table["sha256"]:
        return "does not match its checksum (corrupted)"
    if table.get("key") != key or table.get("format") != CACHE_FORMAT:
        return f"was written for another key or format (key {table.get('key')}, format {table.get('format')})"
    return None


def _load(path: Path, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(table, None) for a valid table of `key` at `path`; (None, what is wrong) otherwise."""
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, unreadable
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"is unreadable ({type(exc).__name__}: {first[:120]})"
    problem = _problem(table, key)
    return (None, problem) if problem else (table, None)


def write_table(path: Path, table: dict[str, Any]) -> bool:
    """Seal `table` with its checksum and write it to `path` atomically, replacing a bad file; False (nothing
    written) when a valid file for this key is already there. A failed write raises `po.atomic.WriteError`."""
    table["sha256"] = table_checksum(table)
    if path.exists() and _load(path, table.get("key"))[0] is not None:
        return False  # a concurrent run finished the same key: keep its file
    write_atomic(path, lambda fh: torch.save(table, fh))
    return True


def read_table(path: Path, key: str) -> dict[str, Any] | None:
    """The stored table for `key` if its checksum verifies, else None: missing, or bad (one warning line)."""
    if not path.is_file():
        return None
    table, problem = _load(path, key)
    if problem is not None:
        log.warning("reference cache %s %s; recomputing and replacing it", path, problem)
        return None
    return table


# --- values -----------------------------------------------------------------------------------------------------

class KeyedCollator:
    """Wraps a pair collator and adds `pair_keys` (content digests) so that cached values can be looked up."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(examples)
        batch["pair_keys"] = torch.tensor([pair_digest(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"])
                                           for e in examples], dtype=torch.int64)
        return batch


@torch.no_grad()
def compute_table(model: torch.nn.Module, datasets: Iterable[Any], collator: KeyedCollator, key: str,
                  batch_size: int, device: torch.device | str, chunk_size: int = 256) -> dict[str, Any]:
    """Run the reference model once over every pair and collect its per-token log-probs by pair key."""
    from po.step.layouts import batch_response_masks, batch_token_logps

    model.eval()
    keys, chosen, rejected = [], [], []
    for ds in datasets:
        if ds is None:
            continue
        for start in range(0, len(ds), batch_size):
            examples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            batch = {k: v.to(device) for k, v in collator(examples).items()}
            values = batch_token_logps(model, batch, chunk_size).float().cpu()
            mask = batch_response_masks(batch).cpu()
            b = len(examples)
            for i in range(b):
                chosen.append(values[i][mask[i]])
                rejected.append(values[b + i][mask[b + i]])
            keys.extend(batch["pair_keys"].tolist())

    def flat(parts):
        offsets = torch.tensor([0] + [len(p) for p in parts]).cumsum(0)
        return torch.cat(parts) if parts else torch.zeros(0), offsets

    (c, co), (r, ro) = flat(chosen), flat(rejected)
    return {"format": CACHE_FORMAT, "key": key, "pair_keys": torch.tensor(keys, dtype=torch.int64),
            "chosen": c, "chosen_offsets": co, "rejected": r, "rejected_offsets": ro}


class CachedReference:
    """A reference source that reads stored values by pair key; it runs no model (`for_batch`)."""

    def __init__(self, table: dict[str, Any]):
        self.table = table
        self.index = {k: i for i, k in enumerate(table["pair_keys"].tolist())}

    def _values(self, part: str, i: int) -> torch.Tensor:
        offsets = self.table[f"{part}_offsets"]
        return self.table[part][offsets[i]:offsets[i + 1]]

    def for_batch(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from po.step.layouts import batch_response_masks

        mask = batch_response_masks(inputs)
        b = mask.shape[0] // 2
        out = torch.zeros(mask.shape, dtype=torch.float32)
        for i, k in enumerate(inputs["pair_keys"].tolist()):
            j = self.index.get(k)
            if j is None:
                raise POError("reference=cached: a batch pair has no cached value (the cache does not match this "
                              "data); delete the cache file or run po-cache-ref again")
            for row, part in ((i, "chosen"), (b + i, "rejected")):
                v = self._values(part, j)
                n = int(mask[row].sum().item())
                if len(v) != n:
                    raise POError(f"reference=cached: stored {part} values have {len(v)} tokens, the batch has {n}; "
                                  "the cache does not match this data")
                out[row, :n] = v
        return out.to(mask.device)


def reference_from_cache(cfg: DictConfig, tokenizer, data, collator, device, batch_size: int,
                         chunk_size: int = 256, must_write: bool = False) -> tuple[CachedReference, dict[str, Any]]:
    """Open the cache for this config, filling it first on a miss (the only case that loads a reference model).

    A cache file that cannot be written raises `WriteError` when `must_write` (po-cache-ref), else it is one warning
    line and the values are used from memory (po-train)."""
    from po.models import policy

    datasets = [data.train, data.eval]
    key, _ = cache_key(cfg, tokenizer, datasets)
    path = cache_path(cache_dir(cfg), key)
    table = read_table(path, key)
    facts = {"path": str(path), "hit": table is not None}
    if table is None:
        log.info("reference cache miss: computing reference log-probs into %s", path)
        model = policy.load_reference(cfg.model, tokenizer, cfg.seed, None).to(device)
        if collator is None:  # po-cache-ref: the layout po-train would choose (the values agree to ~1e-6 anyway)
            from po.step.layouts import choose_collator

            collator = KeyedCollator(choose_collator(cfg.trainer.get("packing", False), model,
                                                     tokenizer.pad_token_id, cfg.data.max_length))
        table = compute_table(model, datasets, collator, key, batch_size, device, chunk_size)
        del model
        try:
            facts["written"] = write_table(path, table)
        except WriteError as exc:
            if must_write:
                raise
            log.warning("reference cache not written: cannot write %s (%s); this run uses the values from memory "
                        "(set reference.dir to a writable folder with free space)", exc.path, exc.reason)
            facts["written"] = False
    else:
        log.info("reference cache hit: %s (no reference model loaded)", path)
    return CachedReference(table), facts
