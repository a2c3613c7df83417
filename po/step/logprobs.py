"""Per-token log-probs of response tokens, without materializing fp32 `[B, T, V]` logits.

The model runs once with `output_hidden_states=True` and `logits_to_keep=1` (so it computes logits for one
position only). The final hidden states at the positions that predict response tokens are gathered, and the LM
head plus fp32 log-softmax run over chunks of those positions; under grad each chunk is checkpointed, so only one
chunk of logits is alive at any time, in the forward and the backward pass. Going through the model's own
`forward` keeps DDP, DeepSpeed and PEFT wrappers in charge of their hooks.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP / DeepSpeed wrappers (PEFT models are kept: they forward attributes)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, object]:
    """Post-norm last-layer hidden states `[R, T, H]` and the raw model output (for extra hidden states)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, logits_to_keep=1, use_cache=False, **kwargs)
    return out.hidden_states[-1], out


def output_head(model: torch.nn.Module) -> tuple[torch.nn.Module, float | None]:
    """The model's LM head and its final-logit soft-cap (Gemma-2 style; None for most models)."""
    bare = unwrap(model)
    return bare.get_output_embeddings(), getattr(getattr(bare, "config", None), "final_logit_softcapping", None)


def head_logits(hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    """fp32 logits of `hidden` under `head`, soft-capped when the model caps them."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk_logps(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, softcap: float | None):
    logits = head_logits(hidden, head, softcap)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def scored_positions(input_ids: torch.Tensor, response_mask: torch.Tensor):
    """(rows, source positions, target ids) of every response token: position t predicts token t + 1."""
    scored = response_mask[:, 1:].bool()
    rows, cols = scored.nonzero(as_tuple=True)
    return rows, cols, input_ids[rows, cols + 1], scored


def token_logps_from_hidden(model: torch.nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                            response_mask: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Response-aligned log-probs `[R, L]` (L = longest response in the batch; zero where padded)."""
    rows, cols, targets, scored = scored_positions(input_ids, response_mask)
    return scatter_response(chunked_logps(model, hidden[rows, cols], targets, chunk_size), rows, scored)


def chunked_logps(model: torch.nn.Module, gathered: torch.Tensor, targets: torch.Tensor,
                  chunk_size: int = 256) -> torch.Tensor:
    """Flat fp32 log-probs of `targets` from hidden states `[N, H]` at any scored positions (packed layouts)."""
    head, softcap = output_head(model)
    pieces = []
    for start in range(0, gathered.shape[0], chunk_size):
        h, t = gathered[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logps, h, t, head, softcap, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(h, t, head, softcap))
    return torch.cat(pieces) if pieces else gathered.new_zeros(0, dtype=torch.float32)


def scatter_response(flat: torch.Tensor, rows: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Place per-token values (row-major over `scored`) into a response-aligned `[R, L]` tensor."""
    lengths = scored.sum(-1)
    width = int(lengths.max().item()) if lengths.numel() else 0
    index = (scored.cumsum(-1) - 1)[scored]
    out = flat.new_zeros((scored.shape[0], max(width, 1)))
    return out.index_put((rows, index), flat)


def response_masks(response_mask: torch.Tensor) -> torch.Tensor:
    """Response-aligned boolean mask `[R, L]` matching `token_logps_from_hidden`."""
    lengths = response_mask[:, 1:].sum(-1)
    width = max(int(lengths.max().item()) if lengths.numel() else 0, 1)
    return torch.arange(width, device=response_mask.device).unsqueeze(0) < lengths.unsqueeze(1)


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor, chunk_size: int = 256,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """One forward of `model`, then the response tokens' log-probs `[R, L]`, fp32."""
    hidden, _ = final_hidden_states(model, input_ids, attention_mask, position_ids)
    return token_logps_from_hidden(model, hidden, input_ids, response_mask, chunk_size)
