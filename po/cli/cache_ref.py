"""`po-cache-ref` (= `python -m po.cli.cache_ref`): fill the reference log-prob cache ahead of a sweep.

Takes the same overrides as `po-train`; the runs that later use `reference=cached` with the same model, tokenizer,
data and tokenization settings read the values instead of loading a reference model.

Examples:
    po-cache-ref data=jsonl data.path=prefs.jsonl data.max_length=1024
    po-cache-ref model=hf model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct reference.dir=/shared/po-cache
    po-train -m reference=cached reference.dir=/shared/po-cache loss=dpo,ipo loss.beta=0.05,0.1

A file already there is verified by its checksum; a damaged one is recomputed and replaced. A file that cannot be
written (disk full, read-only folder) is one `po-cache-ref: error:` line naming it, and no partial file is left.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from po.cli.common import fill_and_report, seeded_inputs
from po.config import conf_dir
from po.errors import ConfigError
from po.run.build import open_reference_cache
from po.run.validate import validate

log = logging.getLogger("po")


def fill_reference_cache(cfg: DictConfig) -> dict[str, Any]:
    """Compute (on a miss) and store the reference values for `cfg`; returns path, hit and pair count."""
    if cfg.reference.strategy != "cached":
        raise ConfigError(f"po-cache-ref fills the cache of reference=cached; got reference={cfg.reference.strategy}")
    if not validate(cfg).needs_reference:
        raise ConfigError(f"{cfg.loss._target_} needs no reference values; there is nothing to cache")
    tokenizer, data, device = seeded_inputs(cfg)
    reference, facts = open_reference_cache(cfg, tokenizer, data, None, device, cfg.trainer.per_device_eval_batch_size,
                                            must_write=True)  # writing the file is this command's whole job
    facts["pairs"] = len(reference.index)  # pairs, or (prompt, response) entries for ranked lists
    facts["unit"] = "responses" if data.lists else "pairs"
    return facts


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _main(cfg: DictConfig) -> None:
    fill_and_report("po-cache-ref", fill_reference_cache, cfg, lambda facts: f"{facts['pairs']} {facts['unit']}")


def main() -> None:
    if not any(arg.startswith(("reference=", "+reference=")) for arg in sys.argv[1:]):
        sys.argv.append("reference=cached")  # the cache this command fills is the one reference=cached reads
    _main()


if __name__ == "__main__":
    main()
