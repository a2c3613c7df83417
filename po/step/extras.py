"""Per-token extras a loss may ask for through `needs`: full-vocabulary token KL, hidden states, activations.

The plain step (po/step/pair_batch.py) computes only response log-probs. A loss that declares any of `EXTRA_NEEDS`
(SparsePO)
goes through `compute_with_extras` instead, which still runs one forward per model:

- the reference model (through the configured reference source, so frozen copies and adapter-disabled PEFT policies
  both work) yields its final hidden states at the scored positions and, when asked, every layer's hidden states
  (`output_hidden_states`) or activation summaries from forward hooks on attention and MLP modules;
- the policy forward yields its final hidden states (and, when asked, its own hidden states, detached);
- po/step/token_kl.py turns both final hidden states into the policy and reference token log-probs and the token KL,
  chunk by chunk.

Hidden-state and activation extras are returned over the response *span*: index `k` is the position that predicts
response token `k`, index `k + 1` is token `k`'s own position, so a span is one longer than the response and a loss
can choose either (`mask_position=predicting|token`). Keys end in `_chosen` / `_rejected`, so `PairBatch.swapped()`
exchanges them. Nothing here depends on the model's architecture: any Hugging Face causal LM works unpatched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from losses.base import (NEEDS, POLICY_HIDDEN_STATES, POLICY_LAST_HIDDEN_STATE, REF_ACTIVATIONS, REF_HIDDEN_STATES,
                         REF_LAST_HIDDEN_STATE, TOKEN_KL, TOKEN_LOGPS, PreferenceLoss)
from po.step.layouts import split_chosen_rejected
from po.step.logprobs import (final_hidden_states, output_head, response_masks, scatter_response, scored_positions,
                              unwrap)
from po.step.reference import ReferenceSource
from po.step.token_kl import chunked_token_kl

log = logging.getLogger(__name__)

# The needs served here (every name of losses.base.NEEDS but token log-probs, which every step computes).
EXTRA_NEEDS = frozenset(NEEDS) - {TOKEN_LOGPS}
ALL_LAYERS = {"ref": REF_HIDDEN_STATES, "policy": POLICY_HIDDEN_STATES}
LAST_LAYER = {"ref": REF_LAST_HIDDEN_STATE, "policy": POLICY_LAST_HIDDEN_STATE}


def needs_extras(loss: PreferenceLoss) -> bool:
    """True when the loss asks for anything beyond per-token log-probs that this module provides."""
    return bool(EXTRA_NEEDS & loss.needs)


@dataclass
class _ModelView:
    """What one forward of a model leaves for the chunked KL and the extras."""

    hidden: torch.Tensor            # [N, H] final hidden states at the scored positions
    head: torch.nn.Module           # its LM head
    softcap: float | None
    spans: dict[str, torch.Tensor]  # extras over the response span, [R, W + 1, ...]


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks: the first ModuleList as long as `num_hidden_layers`."""
    bare = unwrap(model)
    count = bare.config.get_text_config().num_hidden_layers
    for module in bare.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(bare).__name__}: no ModuleList of {count} decoder layers found for activation hooks")


def _block_kind(name: str) -> str | None:
    lname = name.lower()
    if "norm" in lname or lname.startswith("ln"):
        return None
    if "attn" in lname or "attention" in lname:
        return "attention"
    if "mlp" in lname or "feed_forward" in lname or "ffn" in lname:
        return "mlp"
    return None


class ActivationRecorder:
    """Forward hooks on every decoder layer's attention and MLP modules; keeps the mean over the hidden dim."""

    def __init__(self, model: torch.nn.Module):
        self.means: dict[int, torch.Tensor] = {}
        self.names: list[str] = []
        self._handles = []
        for i, layer in enumerate(decoder_layers(model)):
            for name, child in layer.named_children():
                if _block_kind(name) is not None:
                    self._handles.append(child.register_forward_hook(self._hook(len(self.names))))
                    self.names.append(f"layers.{i}.{name}")
        if not self.names:
            log.warning("no attention/MLP modules recognized in %s: activation masks use the residual stream only",
                        type(unwrap(model)).__name__)

    def _hook(self, index: int):
        def record(module, args, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            self.means[index] = tensor.detach().float().mean(-1)
        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def stacked(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """`[R, T, K]`: attention and MLP outputs, then the residual stream after every layer."""
        per_hook = [self.means[i] for i in range(len(self.names))]
        per_hook += [h.detach().float().mean(-1) for h in hidden_states[1:]]
        return torch.stack(per_hook, dim=-1)


def response_span(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """`[R, T, ...]` -> `[R, W + 1, ...]`: index k = position predicting response token k, k + 1 = token k itself."""
    lengths = scored.sum(-1)
    width = max(int(lengths.max().item()) if lengths.numel() else 0, 1)
    index = (scored.cumsum(-1) - 1)[scored]
    out = values.new_zeros((values.shape[0], width + 1, *values.shape[2:]))
    out[rows, index] = values[rows, cols]
    out[rows, index + 1] = values[rows, cols + 1]
    return out


def _layer_span(hidden_states: tuple[torch.Tensor, ...], last_only: bool, rows, cols, scored) -> torch.Tensor:
    layers = hidden_states[-1:] if last_only else hidden_states[1:]
    return torch.stack([response_span(h.detach(), rows, cols, scored) for h in layers], dim=2)


def _view(model: torch.nn.Module, inputs: dict[str, torch.Tensor], prefix: str, needs: set[str],
          positions: tuple) -> _ModelView:
    rows, cols, _, scored = positions
    recorder = ActivationRecorder(model) if prefix == "ref" and REF_ACTIVATIONS in needs else None
    try:
        hidden, out = final_hidden_states(model, inputs["input_ids"], inputs["attention_mask"])
    finally:
        if recorder is not None:
            recorder.remove()
    spans = {}
    if ALL_LAYERS[prefix] in needs:
        spans[ALL_LAYERS[prefix]] = _layer_span(out.hidden_states, False, rows, cols, scored)
    if LAST_LAYER[prefix] in needs:
        spans[LAST_LAYER[prefix]] = _layer_span(out.hidden_states, True, rows, cols, scored)
    if recorder is not None:
        spans[REF_ACTIVATIONS] = response_span(recorder.stacked(out.hidden_states), rows, cols, scored)
    head, softcap = output_head(model)
    return _ModelView(hidden[rows, cols], head, softcap, spans)


def compute_with_extras(model: torch.nn.Module, inputs: dict[str, torch.Tensor], loss: PreferenceLoss,
                        reference: ReferenceSource | None,
                        chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Policy and reference log-probs `[2B, W]` plus the extras the loss asked for, split into chosen/rejected."""
    needs = set(loss.needs)
    if reference is None or not reference.live:
        raise RuntimeError("this loss needs the live reference model (token KL, hidden states), but the reference "
                           "source runs no model (reference=none or cached)")
    positions = scored_positions(inputs["input_ids"], inputs["response_mask"])
    rows, _, targets, scored = positions
    ref = reference.run(model, lambda m: _view(m, inputs, "ref", needs, positions))
    policy = _view(model, inputs, "policy", needs, positions)
    logps, kl, ref_logps = chunked_token_kl(policy.hidden, ref.hidden, targets, policy.head, ref.head, chunk_size,
                                            policy.softcap, ref.softcap)
    mask = response_masks(inputs["response_mask"])
    extras: dict[str, Any] = {}
    if TOKEN_KL in needs:
        extras[f"{TOKEN_KL}_chosen"], extras[f"{TOKEN_KL}_rejected"] = split_chosen_rejected(
            scatter_response(kl, rows, scored), mask)
    for name, span in {**ref.spans, **policy.spans}.items():
        extras[f"{name}_chosen"], extras[f"{name}_rejected"] = split_chosen_rejected(span, mask, extra=1)
    return scatter_response(logps, rows, scored), scatter_response(ref_logps, rows, scored), extras
