"""The maths of one step as plain functions: policy forward -> per-token log-probs -> PairBatch -> loss.

`PreferenceTrainer.compute_loss` calls `pair_batch` and the loss; tests call `pair_loss` directly without a trainer.
"""

from __future__ import annotations

from typing import Callable

import torch

from losses.base import LossOutput, PairBatch, PreferenceLoss
from po.step.extras import needs_extras, pair_batch_with_extras
from po.step.layouts import batch_response_masks, batch_token_logps, is_packed

ReferenceSource = Callable[[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]], torch.Tensor]
BATCH_EXTRAS = ("annotator", "weight", "row_ids")


def split_pairs(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[2B, L]` rows (B chosen, then B rejected) -> chosen, rejected, each trimmed to its own longest response."""
    half = values.shape[0] // 2
    out = []
    for part in (slice(0, half), slice(half, None)):
        v, m = values[part], mask[part]
        width = max(int(m.sum(-1).max().item()), 1)
        out.append((v[:, :width], m[:, :width]))
    (vc, mc), (vr, mr) = out
    return vc, vr, mc, mr


def build_pair_batch(policy: torch.Tensor, reference: torch.Tensor | None, mask: torch.Tensor,
                     extras: dict | None = None) -> PairBatch:
    """A `PairBatch` from response-aligned `[2B, L]` policy (and reference) log-probs and their mask."""
    pc, pr, mc, mr = split_pairs(policy, mask)
    rc = rr = None
    if reference is not None:
        rc, rr, _, _ = split_pairs(reference, mask)
    return PairBatch(pc, pr, mc, mr, rc, rr, extras=dict(extras or {}))


def pair_batch(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
               reference: ReferenceSource | None, chunk_size: int = 256) -> PairBatch:
    """Run the policy once on chosen+rejected and get reference values if the loss needs them."""
    if needs_extras(loss):  # token KL, hidden states, activations (SparsePO): po/extras.py
        if is_packed(inputs):
            raise ValueError("a loss that needs token KL or hidden states takes plain rows, not packed ones; "
                             "build its batches with po.data.PairCollator (po-train does)")
        return pair_batch_with_extras(model, inputs, loss, reference, chunk_size, BATCH_EXTRAS)

    def compute(m: torch.nn.Module) -> torch.Tensor:  # packed rows or plain rows: the same [2B, L] values
        return batch_token_logps(m, inputs, chunk_size)

    ref = None
    if loss.needs_reference:
        if reference is None:
            raise RuntimeError("the loss needs reference log-probs but no reference source was configured")
        # a source that reads stored values by pair (po.run.refcache.CachedReference) runs no model
        ref = reference.for_batch(inputs) if hasattr(reference, "for_batch") else reference(model, compute)
    policy = compute(model)
    extras = {k: inputs[k] for k in BATCH_EXTRAS if k in inputs}
    return build_pair_batch(policy, ref, batch_response_masks(inputs), extras)


def pair_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
              reference: ReferenceSource | None, chunk_size: int = 256) -> LossOutput:
    """`pair_batch`, then the loss."""
    return loss(pair_batch(model, inputs, loss, reference, chunk_size))
