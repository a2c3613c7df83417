"""The two row layouts of a batch, read back: response masks, chosen/rejected split, and the packed row's mask.

Plain rows (`po.data.collate.PairCollator`): B chosen rows then B rejected rows. Packed rows
(`PackedPairCollator`): one row `[P[:-1] | P[-1] C | P[-1] R]` per pair instead of two rows.
Either way a step gets the same response-aligned `[2B, L]` log-probs (`batch_token_logps`) and mask
(`batch_response_masks`), which `split_chosen_rejected` splits; this is the one place that does.

Chosen and rejected share the prompt, so the plain layout (B chosen rows + B rejected rows) runs the prompt twice.
Here each pair is one row; a 4D additive attention mask keeps the rejected part from seeing the chosen part, and
the rejected part's position ids continue from the prompt's end as if the chosen part were absent. The last prompt
token is written twice (once before each response), so the ordinary shift-by-one targets score the first token of
both responses from the prompt's last position. The result is the same response-aligned `[2B, L]` log-probs
(B chosen rows then B rejected rows) as the plain path, to float rounding: `tests/unit/step/test_packing.py` checks values
and gradients on Llama- and Qwen2-shaped models. The measured facts behind the choices are in
`docs/performance.md`.

One pair per row only: several pairs per row are exact too but slower with a dense-mask kernel (CPU, sdpa/eager).
"""

from __future__ import annotations

import torch

from po.data.collate import PACK_KEY, PackedPairCollator, PairCollator
from po.step.logprobs import chunked_logps, final_hidden_states, response_masks, token_logps, unwrap


def is_packed(inputs: dict[str, torch.Tensor]) -> bool:
    return PACK_KEY in inputs


def packed_attention_mask(bounds: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive `[B, 1, T, T]` mask: 0 where a query may attend, `finfo(dtype).min` elsewhere.

    Causal within the row; the rejected part (from `rejected_start`) never sees `[chosen_start, rejected_start)`;
    padding positions attend to themselves only (a row with nothing to attend to gives NaN gradients under eager).
    `finfo.min` rather than `-inf` for the same reason; a float mask because eager attention adds the mask.
    """
    dev = bounds.device
    q = torch.arange(width, device=dev).view(1, width, 1)
    k = torch.arange(width, device=dev).view(1, 1, width)
    cs, rs, n = (bounds[:, j].view(-1, 1, 1) for j in range(3))
    allowed = (k <= q) & (q < n)
    allowed &= ~((q >= rs) & (k >= cs) & (k < rs))
    allowed |= (q >= n) & (k == q)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def _scored_pairs(inputs: dict[str, torch.Tensor]):
    """Source positions, targets, and where each value goes in the response-aligned `[2B, L]` output."""
    input_ids, response_mask, bounds = inputs["input_ids"], inputs["response_mask"], inputs[PACK_KEY]
    scored = response_mask[:, 1:].bool()
    rows, cols = scored.nonzero(as_tuple=True)  # row-major: each row's chosen tokens, then its rejected tokens
    targets = input_ids[rows, cols + 1]
    b = input_ids.shape[0]
    is_rejected = cols >= bounds[rows, 1]
    out_rows = rows + b * is_rejected.long()
    out_cols = torch.where(is_rejected, cols - bounds[rows, 1], cols - bounds[rows, 0])
    return rows, cols, targets, out_rows, out_cols


def packed_response_masks(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Response-aligned boolean mask `[2B, L]` (B chosen rows, then B rejected rows), as the plain path gives."""
    bounds = inputs[PACK_KEY]
    chosen = bounds[:, 1] - bounds[:, 0] - 1
    rejected = bounds[:, 2] - bounds[:, 1] - 1
    lengths = torch.cat([chosen, rejected])
    width = max(int(lengths.max().item()), 1)
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def packed_token_logps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int = 256) -> torch.Tensor:
    """One forward over the packed rows -> response-aligned `[2B, L]` fp32 log-probs, no full logits."""
    dtype = next(unwrap(model).parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    mask = packed_attention_mask(inputs[PACK_KEY], inputs["input_ids"].shape[1], dtype)
    hidden, _ = final_hidden_states(model, inputs["input_ids"], mask, inputs["position_ids"])
    rows, cols, targets, out_rows, out_cols = _scored_pairs(inputs)
    flat = chunked_logps(model, hidden[rows, cols], targets, chunk_size)
    width = packed_response_masks(inputs).shape[1]
    out = flat.new_zeros((2 * inputs["input_ids"].shape[0], width))
    return out.index_put((out_rows, out_cols), flat)


def batch_response_masks(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The `[2B, L]` response mask of either layout."""
    return packed_response_masks(inputs) if is_packed(inputs) else response_masks(inputs["response_mask"])


def batch_token_logps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int = 256) -> torch.Tensor:
    """Response-aligned `[2B, L]` log-probs of either layout (packed rows or B chosen + B rejected rows)."""
    if is_packed(inputs):
        return packed_token_logps(model, inputs, chunk_size)
    return token_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"], chunk_size)


def split_chosen_rejected(values: torch.Tensor, mask: torch.Tensor, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`[2B, W, ...]` response-aligned rows (B chosen, then B rejected) -> chosen `[B, Wc, ...]`, rejected
    `[B, Wr, ...]`, each trimmed to its own longest response (+ `extra` positions: spans are one longer)."""
    half = values.shape[0] // 2
    parts = []
    for part in (slice(0, half), slice(half, None)):
        width = max(int(mask[part].sum(-1).max().item()) if mask[part].numel() else 0, 1) + extra
        parts.append(values[part, :width])
    return parts[0], parts[1]


# --- whether a model takes the packed layout exactly ----------------------------------------------------------

_FLASH = ("flash_attention", "flex_attention", "paged")


def packing_support(model: torch.nn.Module, max_length: int | None = None,
                    responses_per_row: int = 2) -> tuple[bool, str]:
    """(True, "") if this model computes the packed layout exactly, else (False, why).

    Static checks (attention kernels that ignore a 4D mask, sliding windows shorter than a row), then a probe:
    a small packed batch against the plain layout in eval mode; a wrong mask or position ids is off by nats.
    """
    bare = unwrap(model)
    config = getattr(bare, "config", None)
    impl = str(getattr(config, "_attn_implementation", None) or "")
    if any(impl.startswith(name) for name in _FLASH):
        return False, f"attention implementation '{impl}' does not take a 4D attention mask"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and max_length \
            and responses_per_row * max_length > window:  # a row holds the prompt and every response (K for lists)
        return False, f"sliding_window={window} is shorter than a packed row"
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # parameters are partitioned until the engine runs: trust the static checks
        return True, ""
    try:
        diff = _probe(model)
    except Exception as exc:  # a model whose forward rejects a 4D mask or position ids
        return False, f"the model's forward rejected a 4D mask ({type(exc).__name__}: {str(exc)[:120]})"
    tol = 1e-4 if next(bare.parameters()).dtype == torch.float32 else 5e-2
    if not diff <= tol:
        return False, f"packed log-probs differ from the plain layout by {diff:.2g} on a probe batch"
    return True, ""


def _probe(model: torch.nn.Module) -> float:
    vocab = unwrap(model).get_output_embeddings().weight.shape[0]
    device = next(unwrap(model).parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (16,), generator=g).tolist()
    examples = [{"prompt_ids": ids[:5], "chosen_ids": ids[5:8], "rejected_ids": ids[8:14], "row_id": 0},
                {"prompt_ids": ids[:2], "chosen_ids": ids[2:9], "rejected_ids": ids[9:11], "row_id": 1}]
    packed = {k: v.to(device) for k, v in PackedPairCollator(0)(examples).items()}
    plain = {k: v.to(device) for k, v in PairCollator(0)(examples).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            a = packed_token_logps(model, packed)
            b = token_logps(model, plain["input_ids"], plain["attention_mask"], plain["response_mask"])
    finally:
        model.train(was_training)
    mask = response_masks(plain["response_mask"])
    return float(((a - b).abs() * mask).max().item())
