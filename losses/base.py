"""The loss contract every module in `losses/` implements, and everything the trainer may ask of a loss.

The trainer builds one `PairBatch` per step from a single policy forward pass (and the reference values a loss
asks for), calls the loss, and averages `LossOutput.per_pair` over the global batch. A loss never sees the model
in its forward: it is a pure function of per-token log-probabilities and masks, so it can be tested without a
trainer. What else the trainer does for a loss is declared here, on `PreferenceLoss`, each with a no-op default:

    needs_reference          False: no reference model is loaded or run (SimPO)
    needs                    what the step computes for the loss, from the vocabulary below (NEEDS)
    trains_parameters        True: the loss has parameters of its own to optimize (known before they exist)
    bind_model(model)        build those parameters from the model's sizes (called once, before the optimizer)
    bind_annotators(names)   the annotator ids of the training data, in index order (per-annotator weighting)
    optimizer_param_groups(weight_decay)   their optimizer parameter groups
    after_optimizer_step()   once per optimizer step, on every rank (an EM update of a weighting, say)
    state_to_checkpoint() / load_checkpoint_state(state)   what is saved with checkpoints and the final model

Shapes: `B` pairs; chosen tensors are `[B, Lc]` and rejected `[B, Lr]`, response-aligned (token 0 is the first
response token), padded with zeros where the mask is False. Prompt and padding never appear in them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

# The vocabulary of `PreferenceLoss.needs`: what a loss may ask the step to compute, beyond policy log-probs.
# Extras arrive in `PairBatch.extras` under `<name>_chosen` / `<name>_rejected` (so `PairBatch.swapped()` exchanges
# them). Hidden states and activations cover the response *span*: index k is the position that predicts response
# token k, index k + 1 is token k's own position (a span is one longer than the response).
TOKEN_LOGPS = "token_logps"
TOKEN_KL = "token_kl"
REF_HIDDEN_STATES = "ref_hidden_states"
REF_LAST_HIDDEN_STATE = "ref_last_hidden_state"
POLICY_HIDDEN_STATES = "policy_hidden_states"
POLICY_LAST_HIDDEN_STATE = "policy_last_hidden_state"
REF_ACTIVATIONS = "ref_activations"
NEEDS: dict[str, str] = {
    TOKEN_LOGPS: "per-token log-probs of the response tokens (policy, and reference unless reference-free); always",
    TOKEN_KL: "full-vocabulary KL(p_ref || p_theta) at each response token, [B, L] (needs the live reference)",
    REF_HIDDEN_STATES: "every layer's hidden states of the reference over the response span, [B, L+1, layers, H]",
    REF_LAST_HIDDEN_STATE: "the reference's last-layer hidden states over the response span, [B, L+1, 1, H]",
    POLICY_HIDDEN_STATES: "every layer's hidden states of the policy over the response span, detached",
    POLICY_LAST_HIDDEN_STATE: "the policy's last-layer hidden states over the response span, detached",
    REF_ACTIVATIONS: "the reference's attention and MLP output means per response-span position, [B, L+1, K]",
}
# Per-pair data columns the step passes through in `PairBatch.extras` when the data carries them.
ANNOTATOR = "annotator"   # int annotator index; data.extra_columns.annotator (or the weighting's annotator column)
UNSEEN_ANNOTATOR = -1     # the index of an annotator the training split does not have
WEIGHT = "weight"         # float per-pair weight; data.extra_columns.weight
ROW_IDS = "row_ids"       # the pair's row index in its split (for reports of bad steps)
BATCH_COLUMNS = (ANNOTATOR, WEIGHT, ROW_IDS)


@dataclass
class PairBatch:
    """Per-token values of a batch of preference pairs (see the module docstring for shapes)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_mask: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    # Optional values a loss asked for through `needs` (e.g. "token_kl_chosen", "annotator").
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_lengths(self) -> torch.Tensor:
        """Response token counts, clamped to >= 1 so that means never divide by zero."""
        return self.chosen_mask.sum(-1).clamp(min=1).to(self.policy_chosen.dtype)

    @property
    def rejected_lengths(self) -> torch.Tensor:
        return self.rejected_mask.sum(-1).clamp(min=1).to(self.policy_rejected.dtype)

    def policy_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`S_theta(y)` for chosen and rejected: summed response log-probs, `[B]` each."""
        return masked_sum(self.policy_chosen, self.chosen_mask), masked_sum(self.policy_rejected, self.rejected_mask)

    def ref_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`S_ref(y)`; raises a clear error when the trainer was configured without a reference."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs reference log-probs, but the batch has none (reference=none?)")
        return masked_sum(self.ref_chosen, self.chosen_mask), masked_sum(self.ref_rejected, self.rejected_mask)

    def log_ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`rho(y) = S_theta(y) - S_ref(y)` for chosen and rejected."""
        (pc, pr), (rc, rr) = self.policy_sums(), self.ref_sums()
        return pc - rc, pr - rr

    def swapped(self) -> "PairBatch":
        """The same pairs with chosen and rejected exchanged (LCPO evaluates both orders from one forward)."""
        extras = dict(self.extras)
        for key in list(extras):
            if key.endswith("_chosen"):
                twin = key[: -len("_chosen")] + "_rejected"
                if twin in self.extras:
                    extras[key], extras[twin] = self.extras[twin], self.extras[key]
        return replace(
            self,
            policy_chosen=self.policy_rejected,
            policy_rejected=self.policy_chosen,
            chosen_mask=self.rejected_mask,
            rejected_mask=self.chosen_mask,
            ref_chosen=self.ref_rejected,
            ref_rejected=self.ref_chosen,
            extras=extras,
        )


@dataclass
class LossOutput:
    """What a loss returns.

    per_pair:  `[B]` unreduced loss; the trainer takes the mean over the global batch.
    chosen_rewards, rejected_rewards: `[B]` detached implicit rewards (metrics only).
    metrics:   name -> `[B]` per-pair values or a scalar; averaged over pairs of the global batch when logged.
    penalty:   `[B]` order-independent part already included in `per_pair` (SFT term, L1 mask penalty).
               A weighting such as LCPO reweights `per_pair - penalty` and adds `penalty` back unweighted.
    """

    per_pair: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    penalty: torch.Tensor | None = None

    @property
    def preference(self) -> torch.Tensor:
        """The order-dependent part of the loss: `per_pair` without its penalty."""
        return self.per_pair if self.penalty is None else self.per_pair - self.penalty


class PreferenceLoss(torch.nn.Module):
    """Base class: a loss declares what it needs and what it owns; the trainer computes and calls only that.

    Class attributes (a subclass may set them per instance in `__init__`, before the trainer reads them):
    needs_reference: False for reference-free losses (SimPO): no reference model is loaded or run.
    needs: names from `NEEDS`; the step computes extras only when asked (the plain step is log-probs only).
    trains_parameters: True when the loss optimizes parameters of its own (SparsePO's learned mask network). Known
        at config time, before `bind_model` builds them (DeepSpeed runs refuse such a loss).
    """

    needs_reference: bool = True
    needs: frozenset[str] = frozenset({TOKEN_LOGPS})
    trains_parameters: bool = False

    def forward(self, batch: PairBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind_model(self, model: torch.nn.Module) -> None:
        """Called once with the (unwrapped) policy before the optimizer exists: build parameters sized from it."""

    def bind_annotators(self, names: Sequence[str]) -> None:
        """Called once before training when the data carries annotator ids (`data.extra_columns.annotator`): their
        names, in the index order of `PairBatch.extras["annotator"]`."""

    def optimizer_param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The loss's trainable parameters as optimizer groups (the run's learning rate and schedule apply).
        Default: one group with the trainer's `weight_decay`, or none when there is nothing to train."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay}] if params else []

    def after_optimizer_step(self) -> None:
        """Called once after every optimizer step, on every rank (collectives are allowed here), also on a step the
        NaN guard skipped (the loss's state is then restored afterwards)."""

    def state_to_checkpoint(self) -> dict[str, Any]:
        """What is saved beside every checkpoint and the final model (`loss_state.pt`): parameters and persistent
        buffers by default. An empty dict writes no file."""
        return self.state_dict()

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what `state_to_checkpoint` returned (on resume)."""
        self.load_state_dict(state)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension of the positions where `mask` is set."""
    return (values * mask.to(values.dtype)).sum(-1)


def common_metrics(batch: PairBatch, out_rewards: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The metrics every loss logs, as per-pair tensors (`rewards/accuracies` uses a strict `>`)."""
    chosen, rejected = (r.detach() for r in out_rewards)
    logp_chosen, logp_rejected = (s.detach() for s in batch.policy_sums())
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "logps/chosen": logp_chosen,
        "logps/rejected": logp_rejected,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive(name: str, value: float) -> float:
    """Reject a hyperparameter that is not a finite number > 0 (inf would give NaN steps) when the loss is built."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        hint = "" if _is_number(value) and math.isfinite(value) else " (use a finite number)"
        raise ValueError(f"loss.{name} must be > 0, got {value}{hint}")
    return float(value)


def check_in_range(name: str, value: float, low: float, high: float, high_inclusive: bool = False) -> float:
    """Reject a hyperparameter outside [low, high) (or [low, high]), or not a finite number, in one line."""
    ok = _is_number(value) and math.isfinite(value) and (low <= value <= high if high_inclusive else low <= value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"loss.{name} must be in [{low}, {high}{bracket}, got {value}")
    return float(value)
