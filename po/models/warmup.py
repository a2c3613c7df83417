"""A short supervised warm-up of the tiny model on the shipped toy set's answers (`model.warmup`), on by default for
`model=tiny` (`conf/model/tiny.yaml`; `model=hf` has no warm-up: a real checkpoint is already supervised).

Why: real preference training starts from a supervised model, and a random-initialized tiny model writes noise, so
a judged win rate against it compares two kinds of noise. A few steps of next-token training on the toy set's
(prompt, answer) conversations give a starting model that writes toy-like sentences.

Why both answers of each pair (chosen and rejected): a supervised model is trained on answers of mixed quality, so
it writes good and bad ones, and preference training then moves it toward the good ones; that move is what a judged
win rate against the starting model measures. Both answers weigh the same, so the warm-up carries no preference of
its own (the held-out pairs' answers are in the file it reads, but both of them, equally). Warming up on the chosen
answers alone makes the start already write chosen-like answers and leaves preference training nothing to show:
the default job's judged win rate (toy scorer, 100 warm-up steps) was then 0.566 [0.496, 0.633]; with both answers
it is 0.656 [0.586, 0.723] (100 steps) and 0.734 [0.664, 0.801] (200 steps, the default: README, "Judged
evaluation"). 200 steps rather than 100: a cleaner start, and a length judge in characters
then loses its preference under length control (LC win rate 0.463, against 0.359 after 100 steps).

`model.warmup.answers` picks the answers: `both` (the default, above), `chosen`, or `rejected`, the on-policy setup
(the rejected answer is what the starting model writes, the chosen one a better answer, as in iterative DPO). From
that start the policy's chosen-like answers beat the start's on length about as often as the chosen answer is
longer than the rejected one in the data (79% in tokens): a length judge's raw win rate is 0.854 after the default
job, against 0.717 from the default start, half of whose samples are chosen-like already (README, "Judged
evaluation").

The warm-up is part of the starting model: `po.models.policy.build_tiny_model` applies it, so the policy, the frozen
reference, the reference cache (its key includes `model.warmup`, po/run/refcache.py) and the judge's starting-model
samples all see the warmed-up weights. It is deterministic: it runs on the CPU in float32 from the seeded random
init, with a seeded data order, the same on every rank and with or without DeepSpeed (ZeRO-3 copies the plain
build, po/models/zero.py). The weights are cached on disk (`model.warmup.dir`, default `$PO_CACHE_DIR/warmup` or
`~/.cache/po/warmup`), keyed by everything they depend on (architecture, sizes, dtype, seed, warm-up settings,
tokenizer, toy file, this module's FORMAT, library versions), so a test suite or a sweep pays for it once; an entry
is written atomically and its checksum is verified on every read (a bad entry is one warning line and is
recomputed).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from po.atomic import WriteError, write_atomic
from po.cache_dirs import WARMUP, cache_folder
from po.data.toy import TOY_PATH
from po.fingerprint import json_sha256, sha256_file, table_sha256, tokenizer_fingerprint

log = logging.getLogger(__name__)

FORMAT = 3  # 3: model.warmup.answers, po.fingerprint.table_sha256 checksums; 2: both answers; 1: the chosen ones


def warmup_settings(model_cfg: DictConfig) -> dict[str, Any] | None:
    """The `model.warmup` settings that change the weights, or None when the warm-up is off."""
    warmup = model_cfg.get("warmup")
    if warmup is None or not warmup.get("steps"):
        return None
    values = OmegaConf.to_container(warmup, resolve=True)
    return {k: values[k] for k in ("steps", "learning_rate", "batch_size", "answers")}


def warmup_key(model_cfg: DictConfig, tokenizer, seed: int) -> str:
    import transformers

    parts = {"format": FORMAT, "architecture": model_cfg.architecture,
             "config": OmegaConf.to_container(model_cfg.config, resolve=True), "dtype": str(model_cfg.dtype),
             "attn_implementation": str(model_cfg.get("attn_implementation")), "seed": seed,
             "warmup": warmup_settings(model_cfg), "tokenizer": tokenizer_fingerprint(tokenizer),
             "data": sha256_file(TOY_PATH), "torch": torch.__version__, "transformers": transformers.__version__}
    return json_sha256(parts)[:32]


def cache_path(model_cfg: DictConfig, key: str) -> Path:
    return cache_folder(model_cfg.warmup.get("dir"), WARMUP) / f"{key}.pt"


def _checksum(state: dict[str, torch.Tensor], key: str) -> str:
    return table_sha256({"key": key} | {f"state.{name}": tensor for name, tensor in state.items()})


def _read(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        ok = (isinstance(entry, dict) and entry.get("key") == key and entry.get("format") == FORMAT
              and _checksum(entry["state"], key) == entry.get("sha256"))
    except Exception as exc:  # truncated, not a torch file
        log.warning("warm-up cache %s is unreadable (%s); recomputing it", path, type(exc).__name__)
        return None
    if not ok:
        log.warning("warm-up cache %s does not match its key or checksum; recomputing and replacing it", path)
        return None
    return entry["state"]


ANSWERS = {"both": ("chosen", "rejected"), "chosen": ("chosen",), "rejected": ("rejected",)}


def _conversations(tokenizer, answers: str) -> list[tuple[list[int], int]]:
    """(token ids of prompt + answer, prompt length) for the `answers` of every shipped toy pair (ANSWERS)."""
    out = []
    for line in TOY_PATH.read_text().splitlines():
        row = json.loads(line)
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        for answer in (row[name] for name in ANSWERS[answers]):
            full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False)
            out.append((tokenizer(full, add_special_tokens=False).input_ids, start))
    return out


def _train(model: torch.nn.Module, tokenizer, settings: dict[str, Any], seed: int) -> None:
    """Next-token training on the chosen answers of the toy pairs, their rejected answers or both
    (`model.warmup.answers`; prompt tokens masked), float32 on the CPU, seeded."""
    dtype = next(model.parameters()).dtype
    model.float().train()
    data = _conversations(tokenizer, settings["answers"])
    order = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=0.0)
    pad = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(settings["steps"]):
            batch = order.sample(data, settings["batch_size"])
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            attn = torch.zeros_like(ids)
            for i, (row, start) in enumerate(batch):
                ids[i, :len(row)] = torch.tensor(row)
                labels[i, start:len(row)] = torch.tensor(row[start:])
                attn[i, :len(row)] = 1
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.to(dtype).eval()


def apply_warmup(model: torch.nn.Module, model_cfg: DictConfig, tokenizer, seed: int) -> bool:
    """Give the freshly built plain `model` its warmed-up weights (from the cache, or trained and stored); False when
    the warm-up is off."""
    settings = warmup_settings(model_cfg)
    if settings is None:
        return False
    key = warmup_key(model_cfg, tokenizer, seed)
    path = cache_path(model_cfg, key)
    state = _read(path, key)
    if state is not None:
        model.load_state_dict(state)
        return True
    device = next(model.parameters()).device
    model.to("cpu")
    log.info("supervised warm-up of the tiny model: %d steps on the toy set's answers (%s)", settings["steps"],
             settings["answers"])
    _train(model, tokenizer, settings, seed)
    model.to(device)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    entry = {"format": FORMAT, "key": key, "state": state, "sha256": _checksum(state, key)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda fh: torch.save(entry, fh))
    except (WriteError, OSError) as exc:
        log.warning("warm-up cache not written: %s (%s); the weights are used from memory", path,
                    getattr(exc, "reason", None) or exc)
    return True
