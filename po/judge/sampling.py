"""Batched sampling from the policy and the starting model with the same seeds and settings.

Why: a win rate against the starting model compares two distributions; drawing both models' samples with the same
random streams (common random numbers) and the same settings removes one source of noise, and makes the starting
model's samples a pure function of (model, tokenizer, prompts, settings), which is what lets po.judge.cache reuse
them across a sweep. Prompts are cut into fixed chunks of `batch_size`; chunk `c`, sample `j` is drawn under the
seed `(seed, c, j)` whatever the number of processes, so a data-parallel run (chunks dealt round-robin over ranks,
results gathered) samples exactly what a single process does. Generation uses the model's KV cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from po.step.logprobs import token_logps


@dataclass(frozen=True)
class SamplingSettings:
    samples_per_prompt: int = 2
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(local: dict[int, Any]) -> dict[int, Any]:
    """{chunk index: value} from every rank, merged (every rank gets all)."""
    rank, world = _rank_world()
    if world == 1:
        return local
    parts: list[dict[int, Any] | None] = [None] * world
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in (part or {}).items()}


def pad_id(tokenizer) -> int:
    """The tokenizer's pad token, else its EOS token (many causal-LM tokenizers have no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of `rows` left-padded to the longest: each row's last token is in the last column."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attn[i, width - len(r):] = 1
    return ids, attn


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _chunk_seed(seed: int, chunk: int, sample: int) -> int:
    return (seed * 1_000_003 + chunk * 10_007 + sample * 101 + 17) % (2**63 - 1)


@torch.no_grad()
def sample_responses(model: torch.nn.Module, prompts: list[list[int]], tokenizer,
                     settings: SamplingSettings) -> list[list[list[int]]]:
    """responses[i][j]: the j-th sampled response (token ids, ending at EOS if one was sampled) to prompt i."""
    device = next(model.parameters()).device
    pad, eos = pad_id(tokenizer), tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    rank, world = _rank_world()
    chunks = _chunks(len(prompts), settings.batch_size)
    local: dict[int, list[list[list[int]]]] = {}
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for c in range(rank, len(chunks), world):
                rows = [prompts[i] for i in chunks[c]]
                ids, attn = left_pad(rows, pad)  # left-padded for generation
                width = ids.shape[1]
                per_prompt: list[list[list[int]]] = [[] for _ in rows]
                for j in range(settings.samples_per_prompt):
                    torch.manual_seed(_chunk_seed(settings.seed, c, j))
                    out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True,
                                         temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                                         max_new_tokens=settings.max_new_tokens, pad_token_id=pad,
                                         eos_token_id=eos, use_cache=True)
                    for i in range(len(rows)):
                        response = out[i, width:].tolist()
                        if eos in response:
                            response = response[: response.index(eos) + 1]
                        per_prompt[i].append([t for t in response if t != pad or t == eos] or [eos])
                local[c] = per_prompt
    finally:
        model.train(was_training)
    merged = _gather(local)
    return [responses for c in range(len(chunks)) for responses in merged[c]]


@torch.no_grad()
def sequence_logps(model: torch.nn.Module, prompts: list[list[int]], responses: list[list[list[int]]],
                   batch_size: int = 16) -> list[list[float]]:
    """log p(response | prompt) summed over tokens, for every response; right-padded batches. Every rank computes
    its chunks of prompts; the results are gathered."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    flat = [(i, j) for i, rs in enumerate(responses) for j in range(len(rs))]
    rank, world = _rank_world()
    chunks = _chunks(len(flat), batch_size)
    local: dict[int, list[float]] = {}
    try:
        for c in range(rank, len(chunks), world):
            seqs = [(prompts[i], responses[i][j]) for i, j in (flat[k] for k in chunks[c])]
            width = max(len(p) + len(r) for p, r in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            attn = torch.zeros_like(ids)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for row, (p, r) in enumerate(seqs):
                ids[row, :len(p) + len(r)] = torch.tensor(p + r)
                attn[row, :len(p) + len(r)] = 1
                mask[row, len(p):len(p) + len(r)] = True
            values = token_logps(model, ids.to(device), attn.to(device), mask.to(device))
            local[c] = values.sum(dim=-1).float().cpu().tolist()
    finally:
        model.train(was_training)
    merged = _gather(local)
    values = [v for c in range(len(chunks)) for v in merged[c]]
    out: list[list[float]] = [[] for _ in responses]
    for (i, _), v in zip(flat, values):
        out[i].append(v)
    return out
