"""Full-vocabulary token KL `KL(p_ref || p_theta)` at each response position, in chunks of positions.

SparsePO / TDPO need, at every response position, `sum_v p_ref(v) * (log p_ref(v) - log p_theta(v))`: the full
logits of both models. Materializing them would hold two fp32 `[B, T, V]` tensors. Here both models' *final hidden
states* `[N, H]` at the scored positions are kept instead, and the two LM heads plus fp32 log-softmax run over
chunks of positions. Under grad each chunk is checkpointed (as po/logprobs.py does for log-probs), so at any time
only one chunk of logits per model is alive, in the forward and in the backward pass. The same chunk also yields
the policy's and the reference's log-prob of the actual token, so the loss needs no second pass.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from po.step.logprobs import head_logits


def _log_softmax(hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    return torch.log_softmax(head_logits(hidden, head, softcap), dim=-1)


def _chunk(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, targets: torch.Tensor,
           policy_head: torch.nn.Module, ref_head: torch.nn.Module, policy_softcap: float | None,
           ref_softcap: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy token log-prob, KL(ref || policy), reference token log-prob) for one chunk of positions."""
    logp = _log_softmax(policy_hidden, policy_head, policy_softcap)
    with torch.no_grad():  # the reference side never carries grad (even when it shares the policy's LM head)
        ref_logp = _log_softmax(ref_hidden, ref_head, ref_softcap)
        ref_token = ref_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ref_prob = ref_logp.exp()
        ref_entropy_term = (ref_prob * ref_logp).sum(-1)
    kl = ref_entropy_term - (ref_prob * logp).sum(-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1), kl, ref_token


def chunked_token_kl(policy_hidden: torch.Tensor, ref_hidden: torch.Tensor, targets: torch.Tensor,
                     policy_head: torch.nn.Module, ref_head: torch.nn.Module, chunk_size: int = 256,
                     policy_softcap: float | None = None, ref_softcap: float | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position values `[N]` each: policy log-prob of `targets`, token KL, reference log-prob of `targets`.

    `policy_hidden` / `ref_hidden` are `[N, H]` final (post-norm) hidden states at the positions that predict
    `targets` `[N]`. The KL and the policy log-probs are differentiable through `policy_hidden` and the policy head.
    """
    pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    ref_hidden = ref_hidden.detach()
    for start in range(0, targets.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        args = (policy_hidden[part], ref_hidden[part], targets[part], policy_head, ref_head, policy_softcap,
                ref_softcap)
        if torch.is_grad_enabled() and policy_hidden.requires_grad:
            pieces.append(checkpoint(_chunk, *args, use_reentrant=False))
        else:
            pieces.append(_chunk(*args))
    if not pieces:
        empty = policy_hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty, empty
    logps, kls, ref_logps = zip(*pieces)
    return torch.cat(logps), torch.cat(kls), torch.cat(ref_logps)


def naive_token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Reference implementation on full logits `[..., V]` (tests and the memory benchmark's naive variant)."""
    logp = torch.log_softmax(policy_logits.float(), -1)
    ref_logp = torch.log_softmax(ref_logits.float(), -1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)
