"""Where a step's reference values come from: one `ReferenceSource` interface, three implementations.

- `FrozenModelReference`: a frozen copy of the starting policy (eval mode, no grad; under ZeRO-3 a sharded
  DeepSpeed inference engine, see po/models/zero.py);
- `AdapterReference`: the PEFT policy itself with its adapters disabled (no second model in memory);
- `CachedReference`: per-token reference log-probs read from a table computed once (po/run/refcache.py); it runs
  no model, so it serves only losses whose `needs` are token log-probs (`live` is False).

The step asks a source for the `[2B, L]` response-aligned reference log-probs of a batch (`logps`), and, for losses
that need more than log-probs from the reference (token KL, hidden states), to run a function on the reference
model (`run`). It never asks which kind of source it has. `po.run.build.build_reference` builds the one the
`reference` group names.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from po.errors import POError
from po.step.layouts import batch_response_masks, batch_token_logps
from po.step.list_layouts import list_response_masks, list_token_logps
from po.step.logprobs import unwrap

STRATEGIES = ("auto", "model", "adapter", "cached", "none")


class ReferenceSource:
    """Reference values for a batch. `live`: the source can run a reference model (`run`)."""

    live: bool = True

    def run(self, policy: torch.nn.Module, fn: Callable[[torch.nn.Module], Any]) -> Any:
        """`fn(reference_model)` under no_grad, the reference in eval mode (`policy` is the training model)."""
        raise NotImplementedError

    def logps(self, policy: torch.nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int = 256) -> torch.Tensor:
        """Response-aligned `[2B, L]` reference log-probs of the batch (either row layout)."""
        return self.run(policy, lambda model: batch_token_logps(model, inputs, chunk_size))

    def list_logps(self, policy: torch.nn.Module, inputs: dict[str, torch.Tensor],
                   chunk_size: int = 256) -> torch.Tensor:
        """Response-aligned `[B, K, L]` reference log-probs of a list batch (either list layout)."""
        return self.run(policy, lambda model: list_token_logps(model, inputs, chunk_size))


class FrozenModelReference(ReferenceSource):
    """A frozen copy of the starting policy, in eval mode, run under `no_grad`."""

    def __init__(self, model: torch.nn.Module):
        model.eval()  # a DeepSpeed engine's eval() returns None: do not chain
        self.model = model.requires_grad_(False)

    def run(self, policy: torch.nn.Module, fn: Callable[[torch.nn.Module], Any]) -> Any:
        with torch.no_grad():
            return fn(self.model)


class AdapterReference(ReferenceSource):
    """The PEFT policy with its adapters disabled: the base model, with no second copy in memory."""

    def run(self, policy: torch.nn.Module, fn: Callable[[torch.nn.Module], Any]) -> Any:
        with torch.no_grad(), unwrap(policy).disable_adapter(), _eval_mode(policy):
            return fn(policy)


class CachedReference(ReferenceSource):
    """Stored per-token reference log-probs, looked up by each pair's content digest (the batch's `pair_keys`,
    added by `po.data.collate.KeyedCollator`), or for ranked lists by each response's (`response_keys`). Runs no
    model."""

    live = False

    def __init__(self, table: dict[str, Any]):
        self.table = table
        keys = table["response_keys"] if "response_keys" in table else table["pair_keys"]
        self.index = {k: i for i, k in enumerate(keys.tolist())}

    def run(self, policy: torch.nn.Module, fn: Callable[[torch.nn.Module], Any]) -> Any:
        raise POError("reference=cached holds stored log-probs only and runs no model; this loss needs the live "
                      "reference: use reference=auto (or model/adapter)")

    def _values(self, part: str, i: int) -> torch.Tensor:
        offsets = self.table[f"{part}_offsets"]
        return self.table[part][offsets[i]:offsets[i + 1]]

    def logps(self, policy: torch.nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int = 256) -> torch.Tensor:
        mask = batch_response_masks(inputs)
        b = mask.shape[0] // 2
        out = torch.zeros(mask.shape, dtype=torch.float32)
        for i, k in enumerate(inputs["pair_keys"].tolist()):
            j = self.index.get(k)
            if j is None:
                raise POError("reference=cached: a batch pair has no cached value (the cache does not match this "
                              "data); delete the cache file or run po-cache-ref again")
            for row, part in ((i, "chosen"), (b + i, "rejected")):
                v = self._values(part, j)
                n = int(mask[row].sum().item())
                if len(v) != n:
                    raise POError(f"reference=cached: stored {part} values have {len(v)} tokens, the batch has {n}; "
                                  "the cache does not match this data")
                out[row, :n] = v
        return out.to(mask.device)

    def list_logps(self, policy: torch.nn.Module, inputs: dict[str, torch.Tensor],
                   chunk_size: int = 256) -> torch.Tensor:
        if "response_keys" not in self.table:
            raise POError("reference=cached: the cache holds pairs, the batch ranked lists (the cache does not match "
                          "this data); delete the cache file or run po-cache-ref again")
        mask = list_response_masks(inputs)
        out = torch.zeros(mask.shape, dtype=torch.float32)
        keys, present = inputs["response_keys"].cpu(), inputs["present"].cpu()
        for i, k in present.nonzero().tolist():
            j = self.index.get(int(keys[i, k]))
            if j is None:
                raise POError("reference=cached: a batch response has no cached value (the cache does not match "
                              "this data); delete the cache file or run po-cache-ref again")
            v = self._values("responses", j)
            n = int(mask[i, k].sum().item())
            if len(v) != n:
                raise POError(f"reference=cached: stored response values have {len(v)} tokens, the batch has {n}; "
                              "the cache does not match this data")
            out[i, k, :n] = v
        return out.to(mask.device)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for the reference pass, restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_strategy(name: str, needs_reference: bool, peft: str) -> str:
    """`auto` -> none for reference-free losses, adapter under PEFT, else a frozen model copy."""
    if name != "auto":
        return name
    if not needs_reference:
        return "none"
    return "adapter" if peft != "none" else "model"
