"""The final model of a run, in Hugging Face format: `RUN_DIR/model/`, written whole or not at all.

Full fine-tuning and unmerged PEFT go through `trainer.save_model` (it gathers ZeRO-3 shards; PEFT writes the
adapter, small). With `model.merge_lora_on_save=true` the adapters are merged into the base weights and a plain
model is saved. The tokenizer and the loss's state (`loss_state.pt`) are saved beside it.
"""

from __future__ import annotations

from pathlib import Path

from po.atomic import io_failure
from po.models.peft import is_peft_model
from po.run.distributed import staged_dir_for_all_ranks
from po.trainer.loss_hooks import save_loss_state
from po.trainer.preference_trainer import PreferenceTrainer


def export_model(trainer: PreferenceTrainer, merge_lora: bool, out_dir: Path, tokenizer=None) -> dict[str, str]:
    """Save the final model (and `tokenizer`) into `out_dir`, whole or not at all; return facts for the summary.

    Every rank calls it. The files are written into a temporary folder beside `out_dir`, which replaces `out_dir`
    only once every rank's writes succeeded (`staged_dir_for_all_ranks`): a kill leaves no half-written model,
    and a full disk or a read-only folder is one line naming `out_dir`, with the temporary folder removed.
    """
    out_dir = Path(out_dir)
    with staged_dir_for_all_ranks(out_dir) as staged:
        try:
            facts = _save_model(trainer, merge_lora, staged)
            if tokenizer is not None and trainer.is_world_process_zero():
                tokenizer.save_pretrained(str(staged))
        except Exception as exc:
            failure = io_failure(out_dir, exc)
            if failure is None:
                raise
            raise failure from exc
    if facts.get("model_format") == "peft adapter":
        facts["load_with"] = (f"peft.AutoPeftModelForCausalLM.from_pretrained('{out_dir}') "
                              "(or merge: .merge_and_unload())")
    return facts


def _save_model(trainer: PreferenceTrainer, merge_lora: bool, out_dir: Path) -> dict[str, str]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft_model(model):
        trainer.save_model(str(out_dir))
        return {"model_format": "hf"}
    if merge_lora:
        if trainer.is_world_process_zero():
            merged = model.merge_and_unload()
            merged.save_pretrained(str(out_dir))
            save_loss_state(trainer.loss_module, str(out_dir))
        trainer.accelerator.wait_for_everyone()
        return {"model_format": "hf (LoRA merged)"}
    trainer.save_model(str(out_dir))
    return {"model_format": "peft adapter"}
