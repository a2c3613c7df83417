"""One micro-batch of ranked lists -> `ListBatch` (losses/base.py), and the loss of a step on either batch shape.

policy forward (one packed row per list, or one row per response) -> `[B, K, L]` response log-probs -> reference
values per response from the configured `ReferenceSource` (when the loss needs them) -> `ListBatch`. A listwise loss
(`takes_lists`) gets it whole; any other loss gets the `PairBatch` of the pairs the lists yield
(`ListBatch.pairs(mode)`, by indexing: no response is computed twice). `step_output` is what
`PreferenceTrainer.compute_loss` calls for both pair and list batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from losses.base import BATCH_COLUMNS, PRESENT, SCORES, WEIGHT, ListBatch, LossOutput, PairBatch, PreferenceLoss
from po.data.list_collate import is_list_batch
from po.step.list_layouts import list_response_masks, list_token_logps
from po.step.pair_batch import pair_batch
from po.step.reference import ReferenceSource


def list_batch(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
               reference: ReferenceSource | None, chunk_size: int = 256) -> ListBatch:
    """Run the policy once on every response of every list; reference values per response if the loss needs them."""
    ref = None
    if loss.needs_reference:
        if reference is None:
            raise RuntimeError("the loss needs reference log-probs but no reference source was configured")
        ref = reference.list_logps(model, inputs, chunk_size)
    policy = list_token_logps(model, inputs, chunk_size)
    extras = {k: inputs[k] for k in BATCH_COLUMNS if k in inputs}
    return ListBatch(policy, list_response_masks(inputs), inputs[SCORES].to(policy.dtype), inputs[PRESENT], ref,
                     extras)


@dataclass
class StepOutput:
    """A step's loss output, the scalar to minimize, the pairs it saw (for loss-independent metrics), and the lists
    (None for pair data)."""

    out: LossOutput
    loss: torch.Tensor
    pairs: PairBatch
    lists: ListBatch | None = None


def weighted_mean(per_pair: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """`mean(w * per_pair)` with the WEIGHT column (per pair, or per list for a listwise loss); the plain mean
    without one. A weight of 0 gives that pair no gradient; weights of 1 are the plain mean."""
    if weight is None:
        return per_pair.mean()
    return (weight.to(per_pair.device, per_pair.dtype) * per_pair).mean()


def step_output(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
                reference: ReferenceSource | None, chunk_size: int = 256, list_pairs: str = "all") -> StepOutput:
    """The loss of one micro-batch of pairs or lists (see the module docstring)."""
    if not is_list_batch(inputs):
        batch = pair_batch(model, inputs, loss, reference, chunk_size)
        out = loss(batch)
        return StepOutput(out, weighted_mean(out.per_pair, batch.extras.get(WEIGHT)), batch)
    lists = list_batch(model, inputs, loss, reference, chunk_size)
    pairs, _ = lists.pairs(list_pairs)
    if loss.takes_lists:
        out = loss.forward_lists(lists)
        return StepOutput(out, weighted_mean(out.per_pair, lists.extras.get(WEIGHT)), pairs, lists)
    out = loss(pairs)
    return StepOutput(out, weighted_mean(out.per_pair, pairs.extras.get(WEIGHT)), pairs, lists)
