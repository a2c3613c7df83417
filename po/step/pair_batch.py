"""One micro-batch -> `PairBatch`: the maths of a step as plain functions (no trainer needed).

policy forward (packed or plain rows) -> response-aligned per-token log-probs -> reference values from the
configured `ReferenceSource` (when the loss needs them) -> extras (token KL, hidden states) when the loss asks ->
`PairBatch` (losses/base.py). `PreferenceTrainer.compute_loss` calls `pair_batch` and the loss; tests call
`pair_loss` directly.
"""

from __future__ import annotations

import torch

from losses.base import BATCH_COLUMNS, LossOutput, PairBatch, PreferenceLoss
from po.step.extras import compute_with_extras, needs_extras
from po.step.layouts import batch_response_masks, batch_token_logps, is_packed, split_chosen_rejected
from po.step.logprobs import response_masks
from po.step.reference import ReferenceSource


def build_pair_batch(policy: torch.Tensor, reference: torch.Tensor | None, mask: torch.Tensor,
                     extras: dict | None = None) -> PairBatch:
    """A `PairBatch` from response-aligned `[2B, L]` policy (and reference) log-probs and their mask."""
    pc, pr = split_chosen_rejected(policy, mask)
    mc, mr = split_chosen_rejected(mask, mask)
    rc = rr = None
    if reference is not None:
        rc, rr = split_chosen_rejected(reference, mask)
    return PairBatch(pc, pr, mc, mr, rc, rr, extras=dict(extras or {}))


def pair_batch(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
               reference: ReferenceSource | None, chunk_size: int = 256) -> PairBatch:
    """Run the policy once on chosen+rejected and get reference values if the loss needs them."""
    if needs_extras(loss):  # token KL, hidden states, activations (SparsePO): po/step/extras.py
        if is_packed(inputs):
            raise ValueError("a loss that needs token KL or hidden states takes plain rows, not packed ones; "
                             "build its batches with po.data.collate.PairCollator (po-train does)")
        policy, ref, extras = compute_with_extras(model, inputs, loss, reference, chunk_size)
        mask = response_masks(inputs["response_mask"])
    else:
        ref = None
        if loss.needs_reference:
            if reference is None:
                raise RuntimeError("the loss needs reference log-probs but no reference source was configured")
            ref = reference.logps(model, inputs, chunk_size)
        policy = batch_token_logps(model, inputs, chunk_size)  # packed rows or plain rows: the same [2B, L] values
        extras, mask = {}, batch_response_masks(inputs)
    extras.update({k: inputs[k] for k in BATCH_COLUMNS if k in inputs})
    return build_pair_batch(policy, ref, mask, extras)


def pair_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
              reference: ReferenceSource | None, chunk_size: int = 256) -> LossOutput:
    """`pair_batch`, then the loss."""
    return loss(pair_batch(model, inputs, loss, reference, chunk_size))
