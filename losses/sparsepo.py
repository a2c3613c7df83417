"""SparsePO: token-level preference optimization with sparse token masks (Christopoulou et al. 2024,
arXiv:2410.05102), on the TDPO objective (Zeng et al. 2024, arXiv:2404.11999).

Per response token: reward `r_t = l_theta(t) - l_ref(t)` and full-vocabulary `KL_t = KL(p_ref || p_theta)` at that
position (po/token_kl.py). With non-negative masks `m_u` (reward) and `m_d` (KL):

    U(y) = sum_t m_u(t) r_t,   D(y) = sum_t m_d(t) KL_t,   u = U(y_w) - U(y_l),   delta = D(y_l) - D(y_w)
    L = softplus(-beta (u - delta)) + lambda_u (|m_u(y_w)|_1 + |m_u(y_l)|_1) + lambda_d (|m_d(y_w)|_1 + |m_d(y_l)|_1)

The L1 terms are order-independent: they are returned as `LossOutput.penalty` (LCPO weighting leaves them out).

Hyperparameters:
    beta: 0.1 (paper); typical 0.01-0.5.
    lambda_u, lambda_d: L1 weights on the masks, default 0. In po's marked-token study (docs/sparsepo.md) 1e-4 left
        the masks nearly dense and 1e-3 (with mask_position=token) made them sparse, 22-29% exact zeros, without
        killing them; with the authors' initialization a reference implementation saw 1e-3 kill them in most runs.
    mask: `learned` (SparsePO proper, a network on hidden states, losses/token_masks.py), `activations` (MaPO:
        the reference's activations, detached, no L1, one mask for both terms) or `none` (all ones = TDPO).
    shared_mask: one learned mask for both terms, each L1 weight halved (default); false = two networks.
    mask_position: `predicting` (default, authors' code) or `token` (the token's own state; it has seen the token,
        so the mask can single it out). Applies to learned and activation masks.
    mask_layers: `all` (every layer's hidden states, default) or `last`.
    mask_input: `reference` (default; no grad) or `policy` (its states, detached).
    mask_dropout: dropout on the normalized mask-network input in training, default 0.01.
    mask_weight_decay: weight decay of the mask network's own optimizer group, default 0.01.

Implicit rewards (metrics only): `beta * U(y_w)`, `beta * U(y_l)`. The all-ones reduction to TDPO is pinned by a test.
Run: `po-train loss=sparsepo` (`loss.mask=activations`, `loss.mask=none`, `loss.mask_position=token`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from losses.base import (POLICY_HIDDEN_STATES, POLICY_LAST_HIDDEN_STATE, REF_ACTIVATIONS, REF_HIDDEN_STATES,
                         REF_LAST_HIDDEN_STATE, TOKEN_KL, TOKEN_LOGPS, LossOutput, PairBatch, PreferenceLoss,
                         check_in_range, check_positive, common_metrics, masked_sum)
from losses.token_masks import POSITIONS, MaskNetwork, activation_mask, select_position

log = logging.getLogger(__name__)


def _choice(name: str, value: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"loss.{name}={value}: use one of {', '.join(options)}")
    return value


class SparsePOLoss(PreferenceLoss):
    """SparsePO / MaPO / TDPO (mask=none) with the masks of losses/token_masks.py."""

    def __init__(self, beta: float = 0.1, lambda_u: float = 0.0, lambda_d: float = 0.0, mask: str = "learned",
                 shared_mask: bool = True, mask_position: str = "predicting", mask_layers: str = "all",
                 mask_input: str = "reference", mask_dropout: float = 0.01, mask_weight_decay: float = 0.01):
        super().__init__()
        self.beta = check_positive("beta", beta)
        self.lambda_u = check_in_range("lambda_u", lambda_u, 0.0, float("inf"))
        self.lambda_d = check_in_range("lambda_d", lambda_d, 0.0, float("inf"))
        self.mask = _choice("mask", mask, ("learned", "activations", "none"))
        self.shared_mask = bool(shared_mask)
        self.mask_position = _choice("mask_position", mask_position, POSITIONS)
        self.mask_layers = _choice("mask_layers", mask_layers, ("all", "last"))
        self.mask_input = _choice("mask_input", mask_input, ("reference", "policy"))
        self.mask_dropout = check_in_range("mask_dropout", mask_dropout, 0.0, 1.0)
        self.mask_weight_decay = check_in_range("mask_weight_decay", mask_weight_decay, 0.0, float("inf"))
        self.feature_key = {("reference", "all"): REF_HIDDEN_STATES, ("reference", "last"): REF_LAST_HIDDEN_STATE,
                            ("policy", "all"): POLICY_HIDDEN_STATES,
                            ("policy", "last"): POLICY_LAST_HIDDEN_STATE}[self.mask_input, self.mask_layers]
        needs = {TOKEN_LOGPS, TOKEN_KL}
        needs |= {self.feature_key} if mask == "learned" else {REF_ACTIVATIONS} if mask == "activations" else set()
        self.needs = frozenset(needs)
        self.trains_parameters = mask == "learned"  # its own optimizer group; DeepSpeed runs refuse it
        self.register_module("reward_mask_net", None)
        self.register_module("kl_mask_net", None)
        self._dead_batches = 0

    def bind_model(self, model: torch.nn.Module) -> None:
        """Build the mask network(s) once the model's hidden size and depth are known (called by the trainer)."""
        if self.mask != "learned" or self.reward_mask_net is not None:
            return
        config = model.config.get_text_config()
        layers = config.num_hidden_layers if self.mask_layers == "all" else 1
        self.reward_mask_net = MaskNetwork(config.hidden_size, layers, self.mask_dropout)
        if not self.shared_mask:
            self.kl_mask_net = MaskNetwork(config.hidden_size, layers, self.mask_dropout)

    def optimizer_param_groups(self, weight_decay: float) -> list[dict]:
        """The mask networks' parameters with their own weight decay, `loss.mask_weight_decay` (not the trainer's)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": self.mask_weight_decay}] if params else []

    def _masks(self, batch: PairBatch, side: str, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_u, m_d) `[B, W]` for one side, zero outside the response."""
        valid = mask.to(torch.float32)
        if self.mask == "none":
            return valid, valid
        if self.mask == "activations":
            m = activation_mask(select_position(batch.extras[f"ref_activations_{side}"], self.mask_position), mask)
            return m, m
        if self.reward_mask_net is None:
            raise RuntimeError("SparsePO mask network not built: call bind_model(model) (the trainer does)")
        states = select_position(batch.extras[f"{self.feature_key}_{side}"], self.mask_position)
        train = self.training and torch.is_grad_enabled()
        m_u = self.reward_mask_net(states, train) * valid
        m_d = m_u if self.kl_mask_net is None else self.kl_mask_net(states, train) * valid
        return m_u, m_d

    def forward(self, batch: PairBatch) -> LossOutput:
        kl_w, kl_l = batch.extras["token_kl_chosen"], batch.extras["token_kl_rejected"]
        (pol_w, pol_l), mask_w, mask_l = (batch.policy_chosen, batch.policy_rejected), batch.chosen_mask, batch.rejected_mask
        if batch.ref_chosen is None or batch.ref_rejected is None:
            raise ValueError("SparsePO needs reference log-probs, but the batch has none")
        mu_w, md_w = self._masks(batch, "chosen", mask_w)
        mu_l, md_l = self._masks(batch, "rejected", mask_l)
        u_w = masked_sum(mu_w * (pol_w - batch.ref_chosen), mask_w)
        u_l = masked_sum(mu_l * (pol_l - batch.ref_rejected), mask_l)
        d_w, d_l = masked_sum(md_w * kl_w, mask_w), masked_sum(md_l * kl_l, mask_l)
        per_pair = F.softplus(-self.beta * ((u_w - u_l) - (d_l - d_w)))
        l1_u, l1_d = mu_w.sum(-1) + mu_l.sum(-1), md_w.sum(-1) + md_l.sum(-1)
        penalty = None
        if self.mask == "learned":
            scale = 0.5 if self.kl_mask_net is None else 1.0
            penalty = scale * (self.lambda_u * l1_u + self.lambda_d * l1_d)
            per_pair = per_pair + penalty
        rewards = (self.beta * u_w.detach(), self.beta * u_l.detach())
        metrics = common_metrics(batch, rewards)
        metrics.update({"kl/chosen": masked_sum(kl_w, mask_w).detach(), "kl/rejected": masked_sum(kl_l, mask_l).detach(),
                        "kl/weighted_chosen": d_w.detach(), "kl/weighted_rejected": d_l.detach()})
        tokens = (mask_w.sum(-1) + mask_l.sum(-1)).clamp(min=1).float()
        both = {"": (mu_w, mu_l, l1_u)} if self.kl_mask_net is None else {"u_": (mu_w, mu_l, l1_u), "d_": (md_w, md_l, l1_d)}
        for prefix, (m_w, m_l, l1) in both.items():
            zeros = ((m_w == 0) & mask_w).sum(-1) + ((m_l == 0) & mask_l).sum(-1)
            metrics[f"mask/{prefix}sparsity"] = 100.0 * zeros.float() / tokens
            metrics[f"mask/{prefix}mean"] = l1.detach() / tokens
            metrics[f"mask/{prefix}l1"] = l1.detach()
        if self.mask == "learned" and torch.is_grad_enabled():
            self._warn_if_dead(mu_w, mu_l, md_w, md_l)
        return LossOutput(per_pair, *rewards, metrics=metrics, penalty=penalty)

    def _warn_if_dead(self, *masks: torch.Tensor) -> None:
        """Warn when every mask value of a training batch is 0: no reward and no KL signal, and no gradient."""
        dead = all(not bool((m > 0).any()) for m in masks)
        if dead:
            if self._dead_batches % 100 == 0:
                log.warning("SparsePO: all token masks are 0 in this training batch (dead masks: the loss is constant "
                            "and the mask network gets no gradient). Lower loss.lambda_u / loss.lambda_d or "
                            "loss.mask_weight_decay.")
            self._dead_batches += 1
        else:
            self._dead_batches = 0
