"""Token masks for SparsePO (arXiv:2410.05102): a learned mask network and activation-based masks (MaPO).

Both work on "spans" from po/extras.py: `[B, W + 1, ...]`, where index k is the position that predicts response
token k and index k + 1 is token k's own position. `select_position` picks one of the two views:

- `predicting` (the authors' code): the state that predicts `y_t`; under causal attention it has not seen `y_t`, so
  on a task where one token decides the preference the mask barely separates it (marked/filler mask ratio 1.02-1.06
  in po's marked-token study, 3 seeds).
- `token`: `y_t`'s own state, which has seen it (ratio 2.3-2.9 without L1 on the same task, peak on the marked
  token in every response). See docs/sparsepo.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POSITIONS = ("predicting", "token")


def select_position(span: torch.Tensor, position: str) -> torch.Tensor:
    """`[B, W + 1, ...]` -> `[B, W, ...]` for `mask_position` `predicting` or `token`."""
    return span[:, :-1] if position == "predicting" else span[:, 1:]


class MaskNetwork(torch.nn.Module):
    """m(t) = ReLU(sum_l w_l * ReLU(a_l . LN(h_l(t)) + b_l)): one shared LayerNorm, a Linear(H->1) + ReLU per layer,
    a Linear(L->1, no bias) + ReLU mixer. The ReLUs give exact zeros (sparsity).

    Initialization keeps every mask alive and near 1, so training starts as TDPO: biases 1, per-layer weights
    N(0, (0.1 / sqrt(H))^2) (so `a_l . LN(h)` has a std of ~0.1 whatever H is), mixer weights 1/L. The authors'
    N(0, 0.02) with a random mixer starts about one run in four with all-zero masks, which then never train.
    """

    def __init__(self, hidden_size: int, num_layers: int, dropout: float = 0.01):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden_size)
        self.weight = torch.nn.Parameter(torch.randn(num_layers, hidden_size) * (0.1 / math.sqrt(hidden_size)))
        self.bias = torch.nn.Parameter(torch.ones(num_layers))
        self.mixer = torch.nn.Linear(num_layers, 1, bias=False)
        torch.nn.init.constant_(self.mixer.weight, 1.0 / num_layers)
        self.dropout = dropout

    def forward(self, states: torch.Tensor, train: bool = False) -> torch.Tensor:
        """`[B, T, L, H]` hidden states (any dtype) -> `[B, T]` non-negative fp32 mask."""
        x = self.norm(states.float())
        x = F.dropout(x, self.dropout, training=train)
        per_layer = F.relu(torch.einsum("btlh,lh->btl", x, self.weight) + self.bias)
        return F.relu(self.mixer(per_layer).squeeze(-1))


@torch.no_grad()
def activation_mask(activations: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MaPO mask `[B, W]` in [0, 1] from per-hook activation means `[B, W, K]` (detached).

    Per hook: z-normalize over the sequence's response tokens, so hooks of different scales weigh the same; average
    the z-scores over hooks; min-max rescale over the response tokens so that the lowest token is exactly 0 and the
    highest 1 (rescaling after the average is what keeps the minimum exactly 0). Prompt and padding are 0; a
    response whose tokens all score the same (e.g. one token) gets all zeros.
    """
    m = mask.unsqueeze(-1).to(torch.float32)
    acts = activations.float()
    count = m.sum(1, keepdim=True).clamp(min=1)
    mean = (acts * m).sum(1, keepdim=True) / count
    std = (((acts - mean) ** 2 * m).sum(1, keepdim=True) / count).sqrt()
    z = ((acts - mean) / (std + eps)).mean(-1)
    valid = mask.bool()
    low = z.masked_fill(~valid, float("inf")).amin(1, keepdim=True)
    high = z.masked_fill(~valid, float("-inf")).amax(1, keepdim=True)
    span = (high - low).clamp(min=eps)
    scaled = ((z - torch.where(torch.isfinite(low), low, 0.0)) / torch.where(torch.isfinite(span), span, 1.0))
    return (scaled.clamp(0.0, 1.0) * valid).detach()
