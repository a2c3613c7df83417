"""The two row layouts of a list batch (po/data/list_collate.py), read back as response-aligned `[B, K, L]` values.

Packed rows (`PackedListCollator`): one row `[P[:-1] | P[-1] y_1 | ... | P[-1] y_K]` per list. The 4D additive mask
lets each response's part see the prompt `P[:-1]` and its own part (which starts with its copy of `P[-1]`), never
another response; its position ids continue from the prompt's end. This is the packed pair row of po/step/layouts.py
with K parts instead of two (for K = 2 the mask is the same), so a model that takes the pair row exactly
(`packing_support`) takes this one. Plain rows (`ListCollator`): one row `[P | y_k]` per response.
Either way the step gets the same `[B, K, L]` log-probs and mask; tests/unit/step/test_list_packing.py checks values
and gradients on Llama- and Qwen2-shaped models.
"""

from __future__ import annotations

import torch

from po.data.list_collate import LIST_BOUNDS, LIST_SLOTS
from po.step.logprobs import chunked_logps, final_hidden_states, token_logps, unwrap


def is_packed_list(inputs: dict[str, torch.Tensor]) -> bool:
    return LIST_BOUNDS in inputs


def _segment_of(positions: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """For positions `[B, N]` and part starts `[B, K]` (non-decreasing): the index of the last part starting at or
    before each position (-1 before the first)."""
    return (positions.unsqueeze(-1) >= starts.unsqueeze(1)).sum(-1) - 1


def list_attention_mask(bounds: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive `[B, 1, T, T]` mask: causal; a query in response part k sees the prompt (before the first part) and
    part k only; padding positions see themselves (as `po.step.layouts.packed_attention_mask`)."""
    dev = bounds.device
    starts, n = bounds[:, :-1], bounds[:, -1].view(-1, 1, 1)
    pos = torch.arange(width, device=dev).expand(bounds.shape[0], width)
    seg = _segment_of(pos, starts)  # [B, T]
    own_start = torch.where(seg >= 0, starts.gather(1, seg.clamp(min=0)), torch.zeros_like(seg))
    q = torch.arange(width, device=dev).view(1, width, 1)
    k = torch.arange(width, device=dev).view(1, 1, width)
    allowed = (k <= q) & (q < n)
    allowed &= (k < starts[:, :1].unsqueeze(-1)) | (k >= own_start.unsqueeze(-1))
    allowed |= (q >= n) & (k == q)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def list_response_masks(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[B, K, L]` boolean response mask of either layout."""
    present = inputs["present"]
    if is_packed_list(inputs):
        bounds = inputs[LIST_BOUNDS]
        lengths = (bounds[:, 1:] - bounds[:, :-1] - 1).clamp(min=0)
    else:
        slots = inputs[LIST_SLOTS]
        lengths = torch.zeros(present.shape, dtype=torch.long, device=present.device)
        lengths[slots[:, 0], slots[:, 1]] = inputs["response_mask"][:, 1:].sum(-1)
    width = max(int(lengths.max().item()), 1)
    return torch.arange(width, device=lengths.device).view(1, 1, -1) < lengths.unsqueeze(-1)


def list_token_logps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int = 256) -> torch.Tensor:
    """One forward -> response-aligned `[B, K, L]` fp32 log-probs (zero where masked), either layout."""
    mask = list_response_masks(inputs)
    if not is_packed_list(inputs):
        flat = token_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"], chunk_size)
        slots = inputs[LIST_SLOTS]  # flat has the same width as mask: both are the longest response
        return flat.new_zeros(mask.shape).index_put((slots[:, 0], slots[:, 1]), flat)
    dtype = next(unwrap(model).parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    bounds, input_ids = inputs[LIST_BOUNDS], inputs["input_ids"]
    attention = list_attention_mask(bounds, input_ids.shape[1], dtype)
    hidden, _ = final_hidden_states(model, input_ids, attention, inputs["position_ids"])
    rows, cols = inputs["response_mask"][:, 1:].bool().nonzero(as_tuple=True)
    seg = (cols.unsqueeze(-1) >= bounds[rows, :-1]).sum(-1) - 1  # the response part each scored position is in
    flat = chunked_logps(model, hidden[rows, cols], input_ids[rows, cols + 1], chunk_size)
    out = flat.new_zeros(mask.shape)
    return out.index_put((rows, seg, cols - bounds[rows, seg]), flat)

