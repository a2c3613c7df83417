"""Reference log-probs computed once, stored on disk, and reused by every run with the same key (`reference=cached`).

The key is a hash of everything the values depend on:
  - the reference model: `model=tiny` -> architecture, sizes, dtype, seed, the supervised warm-up's settings
    (`model.warmup`) and library versions (they generate the weights); `model=hf` -> path, dtype, and a content
    hash of its config and weight files;
  - the tokenizer: its serialized vocabulary/merges, chat template and special tokens;
  - the data: an order-independent fingerprint of the tokenized pairs (train and held-out);
  - every tokenization setting of the `data` group (max_length, max_prompt_length, ...).
A changed model, tokenizer, data or setting is a different file, so a stale cache is never read.

Pairs are looked up by a content digest of their token ids (`pair_keys`, added to each batch by `KeyedCollator`),
which survives shuffling and is unique across the train and held-out splits. Ranked lists are stored per response:
each (prompt, response) under its own digest (`response_keys`), so a response shared by lists is stored once.
Files are written to a temporary name in the same folder and renamed into place (po.atomic): a killed writer leaves
only a temporary file that no reader opens, and a writer that finds a valid file for its key already there (a concurrent run) discards its copy.

Every table carries `sha256`, a checksum of its content (every tensor's dtype, shape and bytes, and the other
fields), recomputed and compared on every read. A file that does not load, fails the comparison (bytes flipped on
disk or in a copy), has no checksum (written by an older po) or belongs to another key is reported in one warning
line naming it, treated as a miss, recomputed and replaced. Verifying a table costs about 1 s per GB on top of
loading it (docs/performance.md). A file that cannot be written (disk full, read-only folder) is a warning for
`po-train`, which goes on with the values in memory, and an error for `po-cache-ref`, whose job is to write it.

Only losses whose `needs` are a subset of {"token_logps"} can use it (`po.run.validate` refuses the others).

In a multi-process job global rank 0 fills the cache on a miss while the other ranks wait, then they read it
(`po.run.build` through `po.run.distributed.main_first`): one fill per job. The values are computed by that one
process with a whole (not ZeRO-3-sharded) reference model, as `po-cache-ref` does; a reference too big for one device
is cached ahead with `po-cache-ref` on a machine that holds it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from po.atomic import WriteError, write_atomic
from po.cache_dirs import REFERENCE, cache_folder
from po.data.collate import KeyedCollator
from po.errors import POError
from po.fingerprint import json_sha256, pairs_fingerprint, sha256_files, table_sha256, tokenizer_fingerprint
from po.data.list_collate import is_list_batch
from po.models.warmup import warmup_settings
from po.step.layouts import batch_response_masks, batch_token_logps
from po.step.list_layouts import list_response_masks, list_token_logps
from po.step.reference import CachedReference

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# data-group keys that only choose rows (the row fingerprint already covers them) or only say how to run (where the
# tokenized data is cached, how many processes tokenize, what po-data prints, errors instead of drops)
_ROW_SELECTION_KEYS = {"path", "name", "split", "eval_path", "eval_split", "eval_fraction", "max_rows",
                       "cache", "cache_dir", "num_proc", "show_examples", "strict"}


# --- identities -------------------------------------------------------------------------------------------------

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
                "seed": seed, "torch": torch.__version__, "transformers": transformers.__version__,
                "warmup": warmup_settings(cfg)}  # the supervised warm-up is part of the starting weights
    folder = _model_dir(cfg)
    files = [f for f in folder.iterdir() if f.is_file() and (
        f.name == "config.json" or f.suffix in {".safetensors", ".bin", ".pt", ".pth"} or f.name.endswith(".index.json"))]
    return {**common, "path": str(cfg.name_or_path), "files": sha256_files(files)}


def cache_key(model_cfg: DictConfig, data_cfg: DictConfig, seed: int, tokenizer,
              datasets: Iterable[Any]) -> tuple[str, dict[str, Any]]:
    """(hex key, the parts it hashes) for this model, tokenizer, tokenized data and tokenization settings."""
    data_settings = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items()
                     if k not in _ROW_SELECTION_KEYS}
    parts = {"format": CACHE_FORMAT, "model": model_fingerprint(model_cfg, seed),
             "tokenizer": tokenizer_fingerprint(tokenizer), "data": pairs_fingerprint(datasets),
             "tokenization": data_settings}
    return json_sha256(parts)[:32], parts


def cache_dir(reference_cfg: DictConfig) -> Path:
    """`reference.dir`, else $PO_CACHE_DIR/reference, else ~/.cache/po/reference (po/cache_dirs.py)."""
    return cache_folder(reference_cfg.get("dir"), REFERENCE)


# --- storage ----------------------------------------------------------------------------------------------------

def cache_path(directory: Path, key: str) -> Path:
    return Path(directory) / f"{key}.pt"


def table_checksum(table: dict[str, Any]) -> str:
    """sha256 of a table's content: every field but `sha256` (po.fingerprint.table_sha256)."""
    return table_sha256({k: v for k, v in table.items() if k != "sha256"})


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

@torch.no_grad()
def compute_table(model: torch.nn.Module, datasets: Iterable[Any], collator: KeyedCollator, key: str,
                  batch_size: int, device: torch.device | str, chunk_size: int = 256) -> dict[str, Any]:
    """Run the reference model once over every pair and collect its per-token log-probs by pair key (by response key
    for ranked lists)."""
    model.eval()
    keys, chosen, rejected = [], [], []
    responses: dict[int, torch.Tensor] = {}
    for ds in datasets:
        if ds is None:
            continue
        for start in range(0, len(ds), batch_size):
            examples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
            batch = {k: v.to(device) for k, v in collator(examples).items()}
            if is_list_batch(batch):
                values = list_token_logps(model, batch, chunk_size).float().cpu()
                mask = list_response_masks(batch).cpu()
                present = batch["present"].cpu()
                for (i, k), response_key in zip(present.nonzero().tolist(),
                                                batch["response_keys"].cpu()[present].tolist()):
                    responses[response_key] = values[i, k][mask[i, k]]
                continue
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

    if responses:
        (v, vo) = flat(list(responses.values()))
        return {"format": CACHE_FORMAT, "key": key, "response_keys": torch.tensor(list(responses), dtype=torch.int64),
                "responses": v, "responses_offsets": vo}
    (c, co), (r, ro) = flat(chosen), flat(rejected)
    return {"format": CACHE_FORMAT, "key": key, "pair_keys": torch.tensor(keys, dtype=torch.int64),
            "chosen": c, "chosen_offsets": co, "rejected": r, "rejected_offsets": ro}


def open_cache(path: Path, key: str, fill: Callable[[], dict[str, Any]],
               must_write: bool = False) -> tuple[CachedReference, dict[str, Any]]:
    """The cached reference at `path`, verified; on a miss `fill()` computes the table (the only case that loads a
    reference model) and it is written. A file that cannot be written raises `WriteError` when `must_write`
    (po-cache-ref), else it is one warning line and the values are used from memory (po-train)."""
    table = read_table(path, key)
    facts: dict[str, Any] = {"path": str(path), "hit": table is not None}
    if table is None:
        log.info("reference cache miss: computing reference log-probs into %s", path)
        table = fill()
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
