"""`po-data` (= `python -m po.cli.data`): check a data config without training.

Loads the tokenizer of the configured model (no model weights), reads, normalizes and tokenizes the data exactly as
`po-train` would (same Hydra config and overrides, same cache), then prints the validation report, the length
statistics and a few decoded examples with the prompt/response boundary marked.

Examples:
    po-data
    po-data data=jsonl data.path=prefs.jsonl data.show_examples=5
    po-data model=hf model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct data=ultrafeedback data.min_score_margin=1
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from po.cli.common import errors_as_one_line
from po.config import conf_dir
from po.models.tokenizer import load_tokenizer
from po.run.build import load_data
from po.run.validate import validate

BOUNDARY = "⟦|⟧"  # printed between the prompt and the response


def format_example(tokenizer, record: dict, where: str, index: int) -> str:
    """One pair decoded with special tokens shown; the boundary marker sits where the response tokens start."""
    prompt = tokenizer.decode(record["prompt_ids"], skip_special_tokens=False)
    lines = [f"example {index} ({where}): {len(record['prompt_ids'])} prompt tokens"]
    for role in ("chosen", "rejected"):
        ids = record[f"{role}_ids"]
        response = tokenizer.decode(ids, skip_special_tokens=False)
        lines.append(f"  {role} ({len(ids)} tokens): {prompt!r} {BOUNDARY} {response!r}")
    lines.append(f"  boundary ids: ...{list(record['prompt_ids'][-3:])} {BOUNDARY} chosen {list(record['chosen_ids'][:3])}"
                 f"..., rejected {list(record['rejected_ids'][:3])}...")
    if record.get("response_ids"):  # a ranked list: chosen/rejected above are its best and worst
        lines[0] += f"; a ranked list of {len(record['response_ids'])} responses, chosen = best, rejected = worst"
        for k, (ids, score) in enumerate(zip(record["response_ids"], record["scores"])):
            response = tokenizer.decode(ids, skip_special_tokens=False)
            lines.append(f"  response {k} (score {score:g}, {len(ids)} tokens): {response!r}")
    return "\n".join(lines)


def report(cfg: DictConfig) -> str:
    """The text `po-data` prints for the composed config `cfg`."""
    tokenizer = load_tokenizer(cfg.model)
    data = load_data(cfg, tokenizer)
    out = []
    for split, rep in data.reports.items():
        if split == "train" or rep.rows:
            out.extend(rep.lines(split))
    if data.annotator_ids:
        out.append(f"annotators: {len(data.annotator_ids)} named ids "
                   + ", ".join(f"{k}={v}" for k, v in list(data.annotator_ids.items())[:10]))
    n = min(int(cfg.data.get("show_examples", 3) or 0), len(data.train))
    for i in range(n):
        out.append(format_example(tokenizer, data.train[i], data.wheres["train"][i], i))
    return "\n".join(out)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def _main(cfg: DictConfig) -> None:
    with errors_as_one_line("po-data"):
        validate(cfg)
        print(report(cfg))


def main() -> None:
    # No run directory: po-data writes nothing but the (shared) tokenized-data cache.
    given = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
    sys.argv += [a for a in ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled")
                 if a.split("=", 1)[0] not in given]
    _main()


if __name__ == "__main__":
    main()
