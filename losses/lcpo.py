"""LCPO weighting: EM-learned label reliability around any base loss (Cao et al. 2025, arXiv:2509.24159,
"Latent Collective Preference Optimization"; ICLR 2026 as RE-PO).

Each pair is scored by the base loss as labelled (`L_orig`) and with chosen and rejected swapped (`L_swap`), from
the same forward pass (`PairBatch.swapped()` only exchanges tensors). With `Delta = L_swap - L_orig` (the model's
log-odds that the label is right; for DPO `Delta = beta*h`):

    E-step (per pair, no gradient):  w = sigmoid(stopgrad(Delta) + logit(eta_k))
    M-step (policy):                 L = w*softplus(-Delta) + (1-w)*softplus(Delta) + penalty
    M-step (reliability, once per optimizer step, after the update):
                                     eta_k <- (1-alpha)*eta_k + alpha*mean(w over annotator k's pairs)

For DPO the M-step is exactly `w*L_orig + (1-w)*L_swap`; with `w` frozen at `1-eps` it is conservative DPO.
`penalty` (the base loss's order-independent part: SFT term, L1 mask penalty) is added once, unweighted.
The mean in the eta update is over the whole global batch: sums and counts of `w` are accumulated over the
gradient-accumulation micro-batches of a step and all-reduced over data-parallel ranks in `after_optimizer_step`.
`eta` is clamped to [1e-4, 1-1e-4] and is a registered buffer, so the trainer checkpoints and restores it.

Hyperparameters:
    eta_init: starting reliability (prior probability that a label is right). Default 0.9; paper ablation
        {0.55, 0.75, 0.9, 0.99}, 0.9 best.
    alpha: EMA rate of the eta update. Default 0.1; paper ablation 0.001..1, 0.1 best.
    annotator_column: a data column naming who labelled the pair; one eta per annotator. null = one global eta.
    num_annotators / annotator_names: for direct use; `po-train` calls `bind_annotators(names)` with the training
        data's annotator ids instead. Annotators unseen in training (index -1) use the mean of all etas.

Metrics: `lcpo/w_mean`, `lcpo/w_min` (smallest w of each micro-batch, averaged over the logging window),
`lcpo/frac_w_below_half`, `lcpo/eta` (mean over annotators) and `lcpo/eta/<annotator>` when there are several,
plus the base loss's own metrics from the as-labelled evaluation.

Caveat: on a small set repeated for many epochs the model memorizes the flipped pairs, `w` goes to 1 everywhere
and `1 - eta` collapses toward 0 (see docs/lcpo.md). Run: `po-train loss=dpo loss.beta=2.0 weighting=lcpo`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from losses.base import ANNOTATOR, UNSEEN_ANNOTATOR, LossOutput, PairBatch, PreferenceLoss

ETA_MIN, ETA_MAX = 1e-4, 1 - 1e-4


def e_step(delta: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Posterior that each label is right: `sigmoid(stopgrad(Delta) + logit(eta))`, computed in float64."""
    return torch.sigmoid(delta.detach().double() + torch.logit(eta.double())).to(delta.dtype)


def m_step(delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Policy loss per pair: `w*softplus(-Delta) + (1-w)*softplus(Delta)` (w is a constant here)."""
    return w * F.softplus(-delta) + (1 - w) * F.softplus(delta)


class LCPOWeighting(PreferenceLoss):
    """Wraps `loss` with per-pair label-reliability weights learned by EM (see the module docstring)."""

    def __init__(self, loss: PreferenceLoss, eta_init: float = 0.9, alpha: float = 0.1,
                 annotator_column: str | None = None, num_annotators: int = 1,
                 annotator_names: Sequence[str] | None = None):
        super().__init__()
        if not ETA_MIN <= eta_init <= ETA_MAX:
            raise ValueError(f"weighting.eta_init must be in [{ETA_MIN}, {ETA_MAX}], got {eta_init}")
        if not 0 < alpha <= 1:
            raise ValueError(f"weighting.alpha must be in (0, 1], got {alpha}")
        count = int(num_annotators) if annotator_column else 1
        if count < 1:
            raise ValueError(f"weighting.num_annotators must be >= 1, got {num_annotators}")
        names = [str(n) for n in annotator_names] if annotator_names else [str(i) for i in range(count)]
        if len(names) != count:
            raise ValueError(f"weighting.annotator_names has {len(names)} names for {count} annotators")
        if loss.takes_lists:
            raise ValueError(f"weighting=lcpo reweights pairs, and {type(loss).__name__} is a listwise loss; wrap a "
                             "pairwise loss (it runs on the pairs a list yields)")
        self.base = loss
        self.alpha = float(alpha)
        self.eta_init = float(eta_init)
        self.annotator_column = annotator_column
        self.annotator_names = names
        self.needs_reference = loss.needs_reference
        self.needs = loss.needs
        self.trains_parameters = loss.trains_parameters
        self.signals = loss.signals  # margin and confidence are the base loss's; LCPO evaluates it with them
        self.register_buffer("eta", torch.full((count,), float(eta_init), dtype=torch.float64))
        # Sums and counts of w since the last optimizer step (this rank's micro-batches); not checkpointed.
        self.register_buffer("w_sum", torch.zeros(count, dtype=torch.float64), persistent=False)
        self.register_buffer("w_count", torch.zeros(count, dtype=torch.float64), persistent=False)

    # The contract (losses/base.py), delegated explicitly: LCPO owns eta; everything else is the base loss's.
    def bind_model(self, model: torch.nn.Module) -> None:
        self.base.bind_model(model)

    def bind_annotators(self, names: Sequence[str]) -> None:
        """One eta per annotator of the training data (names in index order), each starting at `eta_init`."""
        if self.annotator_column is None:
            return
        names = [str(n) for n in names] or ["0"]
        self.annotator_names = names
        self.eta = torch.full((len(names),), self.eta_init, dtype=torch.float64, device=self.eta.device)
        self.w_sum = torch.zeros(len(names), dtype=torch.float64, device=self.w_sum.device)
        self.w_count = torch.zeros(len(names), dtype=torch.float64, device=self.w_count.device)

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        return self.base.optimizer_param_groups(weight_decay)  # eta is a buffer, updated by EM, not by the optimizer

    def annotator_index(self, batch: PairBatch) -> torch.Tensor | None:
        """`[B]` annotator indices (-1 = unseen), or None with one global eta."""
        if self.annotator_column is None:
            return None
        ids = batch.extras.get(ANNOTATOR)
        if ids is None:
            raise ValueError(f"weighting.annotator_column={self.annotator_column}, but the batch carries no "
                             "annotator ids (is data.extra_columns.annotator set?)")
        ids = torch.as_tensor(ids, device=self.eta.device).long().view(-1)
        if ids.numel() and (ids.max() >= len(self.eta) or ids.min() < UNSEEN_ANNOTATOR):
            raise ValueError(f"annotator index out of range for {len(self.eta)} annotators: "
                             f"{ids.min().item()}..{ids.max().item()}")
        return ids

    def pair_eta(self, index: torch.Tensor | None, size: int) -> torch.Tensor:
        """Each pair's eta; unseen annotators get the mean of all etas."""
        if index is None:
            return self.eta.expand(size)
        table = torch.cat([self.eta, self.eta.mean().view(1)])  # index -1 picks the mean
        return table[index]

    def evaluate_both(self, batch: PairBatch) -> tuple[LossOutput, torch.Tensor]:
        """The base loss as labelled, and `Delta = L_swap - L_orig` (order-dependent parts only)."""
        orig = self.base(batch)
        swap = self.base(batch.swapped())
        return orig, swap.preference - orig.preference

    def forward(self, batch: PairBatch) -> LossOutput:
        orig, delta = self.evaluate_both(batch)
        index = self.annotator_index(batch)
        w = e_step(delta, self.pair_eta(index, delta.shape[0]).to(delta.device))
        per_pair = m_step(delta, w)
        if orig.penalty is not None:
            per_pair = per_pair + orig.penalty
        if self.training and torch.is_grad_enabled():
            self._accumulate(w.detach(), index)
        metrics = dict(orig.metrics)
        metrics.update(self._metrics(w.detach()))
        return LossOutput(per_pair, orig.chosen_rewards, orig.rejected_rewards, metrics, orig.penalty)

    def _accumulate(self, w: torch.Tensor, index: torch.Tensor | None) -> None:
        w = w.to(self.w_sum.device, torch.float64)
        if index is None:
            self.w_sum += w.sum()
            self.w_count += w.numel()
            return
        seen = index >= 0
        self.w_sum.index_add_(0, index[seen], w[seen])
        self.w_count.index_add_(0, index[seen], torch.ones_like(w[seen]))

    def _metrics(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"lcpo/w_mean": w, "lcpo/frac_w_below_half": (w < 0.5).float()}
        if w.numel():
            out["lcpo/w_min"] = w.min()
        out["lcpo/eta"] = self.eta.mean().float()
        if len(self.eta) > 1:
            for name, value in zip(self.annotator_names, self.eta):
                out[f"lcpo/eta/{name}"] = value.float()
        return out

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """EMA update of eta from this step's global sums and counts of w; call once per step on every rank."""
        stats = torch.stack([self.w_sum, self.w_count])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        sums, counts = stats
        seen = counts > 0
        mean_w = sums / counts.clamp(min=1)
        updated = (1 - self.alpha) * self.eta + self.alpha * mean_w
        self.eta.copy_(torch.where(seen, updated, self.eta).clamp(ETA_MIN, ETA_MAX))
        self.w_sum.zero_()
        self.w_count.zero_()
        self.base.after_optimizer_step()
