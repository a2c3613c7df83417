"""The loss contract every module in `losses/` implements.

The trainer builds one `PairBatch` per step from a single policy forward pass (and the reference values a loss
asks for), calls the loss, and averages `LossOutput.per_pair` over the global batch. A loss never sees the model:
it is a pure function of per-token log-probabilities and masks, so it can be tested without a trainer.

Shapes: `B` pairs; chosen tensors are `[B, Lc]` and rejected `[B, Lr]`, response-aligned (token 0 is the first
response token), padded with zeros where the mask is False. Prompt and padding never appear in them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch


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
    """Base class: a loss declares what it needs, and the trainer computes only that.

    needs_reference: False for reference-free losses (SimPO): the trainer then loads and runs no reference model.
    needs: per-token inputs beyond policy log-probs, e.g. {"token_kl", "ref_hidden_states"}.
    """

    needs_reference: bool = True
    needs: frozenset[str] = frozenset({"token_logps"})

    def forward(self, batch: PairBatch) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError


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
