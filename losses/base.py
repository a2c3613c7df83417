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
    takes_lists / forward_lists(ListBatch)   True: a listwise loss, scoring whole ranked lists (Plackett-Luce DPO)
    signals                  the per-pair signal columns (MARGIN, CONFIDENCE) the loss reads from `extras`

Shapes: `B` pairs; chosen tensors are `[B, Lc]` and rejected `[B, Lr]`, response-aligned (token 0 is the first
response token), padded with zeros where the mask is False. Prompt and padding never appear in them.

Ranked lists (`ListBatch`): `B` lists, each one prompt and up to `K` responses with scores (higher = better);
tensors are `[B, K, L]`, and `present [B, K]` marks the responses a list has (K varies per list). A listwise loss
(`takes_lists = True`) gets the `ListBatch` in `forward_lists`; every other loss gets the `PairBatch` of the pairs
the list yields (`ListBatch.pairs`: each response with a higher score against each with a lower one; ties form no
pair), built by indexing the per-response values, so no response is computed twice and every pairwise loss runs
on lists unchanged. A listwise loss also runs on pair data: a pair is a list of two (`ListBatch.from_pairs`).

Per-pair weights (the WEIGHT column) are the trainer's: it takes the mean of `weight * per_pair`, for any loss.
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
WEIGHT = "weight"         # float per-pair weight; data.extra_columns.weight; applied by the trainer to any loss
MARGIN = "margin"         # float per-pair margin delta (ODPO: softplus(-(beta*h - delta))); data.extra_columns.margin
CONFIDENCE = "confidence"  # float in [0, 1], P(the label is right) (cDPO with a per-pair eps = 1 - c; CREAM's
                           # consistency); data.extra_columns.confidence
ROW_IDS = "row_ids"       # the pair's (or list's) row index in its split (for reports of bad steps)
BATCH_COLUMNS = (ANNOTATOR, WEIGHT, MARGIN, CONFIDENCE, ROW_IDS)
# The per-pair signals a loss may read (declared in `PreferenceLoss.signals`); WEIGHT is for every loss.
SIGNALS: dict[str, str] = {
    MARGIN: "a per-pair offset delta subtracted from the scaled margin: softplus(-(beta*h - delta)) (ODPO)",
    CONFIDENCE: "P(the label is right), a per-pair soft label c in [0, 1]: c*L(y_w, y_l) + (1-c)*L(y_l, y_w) (cDPO, "
                "CREAM)",
}
# Ranked lists: the batch column of response scores `[B, K]` (higher = better) and its presence mask, and the
# extras of a pair a list yields: the scores of its two responses (they end in _chosen/_rejected, so
# `PairBatch.swapped()` exchanges them).
SCORES = "scores"
PRESENT = "present"
SCORE_CHOSEN = "scores_chosen"
SCORE_REJECTED = "scores_rejected"
PAIR_MODES = ("all", "best")  # ListBatch.pairs: every ordered pair, or the best response against each lower one


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
class ListBatch:
    """Per-token values of `B` ranked lists: one prompt each and up to `K` responses with scores.

    policy, mask, reference: `[B, K, L]` response-aligned per-token values (zero where the mask is False).
    scores: `[B, K]`, higher = better (a given ranking arrives as scores); equal scores are a tie and form no pair.
    present: `[B, K]`, the responses a list has (lists shorter than K are padded with absent responses).
    extras: per-list columns (weight, margin, confidence, annotator, row ids), first dimension `B`.
    """

    policy: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    present: torch.Tensor
    reference: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def lengths(self) -> torch.Tensor:
        """`[B, K]` response token counts, clamped to >= 1."""
        return self.mask.sum(-1).clamp(min=1).to(self.policy.dtype)

    def policy_sums(self) -> torch.Tensor:
        """`S_theta(y)` of every response, `[B, K]`."""
        return masked_sum(self.policy, self.mask)

    def ref_sums(self) -> torch.Tensor:
        if self.reference is None:
            raise ValueError("this loss needs reference log-probs, but the batch has none (reference=none?)")
        return masked_sum(self.reference, self.mask)

    def log_ratios(self) -> torch.Tensor:
        """`rho(y) = S_theta(y) - S_ref(y)` of every response, `[B, K]`."""
        return self.policy_sums() - self.ref_sums()

    def best_and_worst(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B]` indices of each list's best response (the first of the highest scores) and its worst (the first of
        the lowest scores), absent responses excluded."""
        high = self.scores.masked_fill(~self.present, -math.inf)
        low = self.scores.masked_fill(~self.present, math.inf)
        return _first_arg(high, torch.amax(high, -1)), _first_arg(low, torch.amin(low, -1))

    def pair_index(self, mode: str = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(list, better, worse)` indices `[P]` of the pairs the lists yield, in list order, then by the better and
        the worse response's position. `mode="all"`: every response against every response with a lower score;
        `"best"`: the best response against each response with a lower score. Ties form no pair."""
        if mode not in PAIR_MODES:
            raise ValueError(f"pair mode {mode!r}: use one of {', '.join(PAIR_MODES)}")
        both = self.present.unsqueeze(2) & self.present.unsqueeze(1)
        valid = both & (self.scores.unsqueeze(2) > self.scores.unsqueeze(1))  # [B, K(better), K(worse)]
        if mode == "best":
            best, _ = self.best_and_worst()
            k = torch.arange(self.scores.shape[1], device=self.scores.device)
            valid &= (k.unsqueeze(0) == best.unsqueeze(1)).unsqueeze(2)
        index = valid.nonzero(as_tuple=True)
        return index[0], index[1], index[2]

    def pairs(self, mode: str = "all") -> tuple[PairBatch, torch.Tensor]:
        """The `PairBatch` of the pairs the lists yield (see `pair_index`), and each pair's list index `[P]`.

        Built by indexing the per-response values (gradients flow back to the one computation of each response);
        per-list extras are repeated for each of the list's pairs, and each pair carries its two responses' scores
        (SCORE_CHOSEN, SCORE_REJECTED)."""
        lists, better, worse = self.pair_index(mode)
        ref_c = ref_r = None
        if self.reference is not None:
            ref_c, ref_r = self.reference[lists, better], self.reference[lists, worse]
        extras = {k: _rows(v, lists, self.scores.shape[0]) for k, v in self.extras.items()}
        extras[SCORE_CHOSEN], extras[SCORE_REJECTED] = self.scores[lists, better], self.scores[lists, worse]
        batch = PairBatch(self.policy[lists, better], self.policy[lists, worse], self.mask[lists, better],
                          self.mask[lists, worse], ref_c, ref_r, extras)
        return batch, lists

    @classmethod
    def from_pairs(cls, batch: PairBatch) -> "ListBatch":
        """Each pair as a list of two: chosen (score 1) then rejected (score 0). Per-pair extras become per-list
        extras; per-response extras (`*_chosen` / `*_rejected`, token KL or hidden states) are not carried."""
        width = max(batch.policy_chosen.shape[1], batch.policy_rejected.shape[1])

        def stack(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
            pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
            return torch.stack([pad(chosen), pad(rejected)], dim=1)

        reference = None
        if batch.ref_chosen is not None and batch.ref_rejected is not None:
            reference = stack(batch.ref_chosen, batch.ref_rejected)
        b = batch.policy_chosen.shape[0]
        scores = torch.tensor([1.0, 0.0], device=batch.policy_chosen.device).expand(b, 2)
        extras = {k: v for k, v in batch.extras.items() if not k.endswith(("_chosen", "_rejected"))}
        return cls(stack(batch.policy_chosen, batch.policy_rejected), stack(batch.chosen_mask, batch.rejected_mask),
                   scores, torch.ones(b, 2, dtype=torch.bool, device=scores.device), reference, extras)


def _first_arg(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`[B]` index of the first position of each row of `values` equal to `target` `[B]`."""
    hits = values == target.unsqueeze(-1)
    return hits.to(torch.int64).argmax(-1)


def _rows(value: Any, index: torch.Tensor, size: int) -> Any:
    """A per-list column indexed per pair (tensors and lists whose first dimension is the list count)."""
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size:
        return value[index.to(value.device)]
    if isinstance(value, (list, tuple)) and len(value) == size:
        return [value[i] for i in index.tolist()]
    return value


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
    takes_lists: True for a listwise loss: the trainer calls `forward_lists(ListBatch)` with whole ranked lists (and
        with each pair of pair data as a list of two). False (default): `forward(PairBatch)`, on list data with the
        pairs each list yields (`data.list_pairs`).
    signals: the per-pair signal columns the loss reads from `extras` (names from `SIGNALS`: MARGIN, CONFIDENCE).
        po refuses, before any model loads, a signal column configured for a loss that does not read it. Per-pair
        weights (WEIGHT) need no declaration: the trainer applies them to any loss's `per_pair`.
    """

    needs_reference: bool = True
    needs: frozenset[str] = frozenset({TOKEN_LOGPS})
    trains_parameters: bool = False
    takes_lists: bool = False
    signals: frozenset[str] = frozenset()

    def forward(self, batch: PairBatch) -> LossOutput:
        """The loss of each pair. A listwise loss scores a pair as a list of two (chosen above rejected)."""
        if self.takes_lists:
            return self.forward_lists(ListBatch.from_pairs(batch))
        raise NotImplementedError(f"{type(self).__name__} defines no forward(PairBatch)")

    def forward_lists(self, batch: ListBatch) -> LossOutput:
        """A listwise loss (`takes_lists = True`): the loss of each list, `per_pair` `[B]` (one value per list), with
        the best and the worst response's rewards as `chosen_rewards` / `rejected_rewards`."""
        raise NotImplementedError(f"{type(self).__name__} is pairwise (takes_lists is False): it gets the pairs a "
                                  "list yields through forward(PairBatch)")

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


def list_metrics(batch: ListBatch, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """`common_metrics` of each list's best against its worst response (`rewards` `[B, K]`); for a list of two it is
    `common_metrics` of the pair."""
    best, worst = batch.best_and_worst()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    chosen, rejected = rewards[rows, best].detach(), rewards[rows, worst].detach()
    sums = batch.policy_sums().detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "logps/chosen": sums[rows, best],
        "logps/rejected": sums[rows, worst],
    }


def pair_margin(batch: PairBatch, like: torch.Tensor) -> torch.Tensor | float:
    """The per-pair margin delta of the MARGIN column (`[B]`, like `like`), or 0.0 when the data has none."""
    value = batch.extras.get(MARGIN)
    return 0.0 if value is None else torch.as_tensor(value, device=like.device).to(like.dtype)


def label_confidence(batch: PairBatch, label_smoothing: float, like: torch.Tensor) -> torch.Tensor | float:
    """P(the label is right) per pair: `(1 - eps) * c + eps * (1 - c)`, with `c` the CONFIDENCE column (1 when the
    data has none, which gives `1 - eps`: conservative DPO) and `eps` the loss's label smoothing."""
    value = batch.extras.get(CONFIDENCE)
    if value is None:
        return 1.0 - label_smoothing
    c = torch.as_tensor(value, device=like.device).to(like.dtype)
    return (1.0 - label_smoothing) * c + label_smoothing * (1.0 - c)


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
