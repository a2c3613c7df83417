"""`PreferenceTrainer`: `transformers.Trainer` with a preference loss in `compute_loss`.

Everything else (DeepSpeed, accumulation, mixed precision, PEFT, checkpoints, schedules, logging backends) is the
Trainer's own. This subclass adds: the pair step, metrics averaged over the global batch, tokens per second, and
the same metrics on the held-out split with an `eval_` prefix.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from transformers import Trainer

from losses.base import ListBatch, PairBatch, PreferenceLoss
from po.step.layouts import batch_response_masks, split_chosen_rejected
from po.step.logprobs import unwrap
from po.step.list_batch import StepOutput, step_output
from po.step.reference import ReferenceSource
from po.trainer.evaluation import loss_independent_metrics
from po.trainer.loss_hooks import AfterOptimizerStep, LossGradients, load_loss_state, loss_param_groups, save_loss_state
from po.trainer.metrics import MetricAccumulator
from po.trainer.ranking import ranking_metrics
from po.trainer.reliable import ReliableTrainerMixin


class PreferenceTrainer(ReliableTrainerMixin, Trainer):
    def __init__(self, *args, loss_module: PreferenceLoss, reference: ReferenceSource | None = None,
                 logps_chunk_size: int = 256, list_pairs: str = "all", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_module = loss_module
        self.reference = reference
        self.logps_chunk_size = logps_chunk_size
        self.list_pairs = list_pairs  # data.list_pairs: the pairs a ranked list yields to a pairwise loss
        self.loss_module.bind_model(unwrap(self.model))  # e.g. SparsePO's mask network, sized from the model
        self.loss_module.to(self.args.device)
        self.add_callback(AfterOptimizerStep(self.loss_module))
        self.add_callback(LossGradients(self.loss_module))  # averaged over ranks, cleared after each step
        self.model_accepts_loss_kwargs = False  # our loss is a mean over pairs: let the Trainer divide by GA
        self._metrics = {"train": MetricAccumulator(), "eval": MetricAccumulator()}
        self._last_log = time.perf_counter()
        self._local_train_tokens = 0.0
        # Figures added to every held-out evaluation after step 0 (a judged eval, po.run.judged): name -> value.
        self.eval_extras: list = []
        # A reference-free run's starting model, used only for the held-out implicit DPO figures (dpo/accuracy,
        # dpo/margin), so that runs of every loss report them (po.run.build.evaluation_reference).
        self.eval_reference: ReferenceSource | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = step_output(model, inputs, self.loss_module, self.reference, self.logps_chunk_size, self.list_pairs)
        out, loss = step.out, step.loss  # loss: mean of weight * per_pair (the plain mean without a weight column)
        acc = self._metrics["train" if model.training else "eval"]
        acc.add(out.metrics)
        if not model.training:
            pairs, lists = self._held_out_values(step, model, inputs)
            acc.add(loss_independent_metrics(pairs))
            if lists is not None:  # held-out ranked lists: eval_rank/ndcg, eval_rank/kendall_tau
                acc.add(ranking_metrics(lists))
        tokens = inputs["attention_mask"].sum()  # a tensor: no device sync on the hot path
        acc.add_total("num_tokens", tokens)
        if model.training:
            self._local_train_tokens = self._local_train_tokens + tokens
        return (loss, out) if return_outputs else loss

    def _held_out_values(self, step: StepOutput, model, inputs) -> tuple[PairBatch, ListBatch | None]:
        """The step's pairs (and lists) for the held-out metrics; a reference-free loss's get the starting model's
        values from `eval_reference`, so that its implicit DPO figures exist as for every other loss."""
        if step.pairs.ref_chosen is not None or self.eval_reference is None:
            return step.pairs, step.lists
        if step.lists is None:
            ref = self.eval_reference.logps(model, inputs, self.logps_chunk_size)
            rc, rr = split_chosen_rejected(ref, batch_response_masks(inputs))
            return dataclasses.replace(step.pairs, ref_chosen=rc, ref_rejected=rr), None
        ref = self.eval_reference.list_logps(model, inputs, self.logps_chunk_size)
        lists = dataclasses.replace(step.lists, reference=ref)
        return lists.pairs(self.list_pairs)[0], lists

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        """`dataloader_drop_last` is for training (full global batches); evaluation always sees every pair."""
        if is_training or not self.args.dataloader_drop_last:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        self.args.dataloader_drop_last = False
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.args.dataloader_drop_last = True

    def create_optimizer(self, *args, **kwargs):
        """The Trainer's optimizer, plus the loss module's trainable parameters in their own group(s).

        The Trainer clears only the model's gradients; `LossGradients` clears these after every step."""
        optimizer = super().create_optimizer(*args, **kwargs)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for group in loss_param_groups(self.loss_module, self.args.weight_decay):
            if not any(id(p) in present for p in group["params"]):
                optimizer.add_param_group(group)
        return optimizer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        self._metrics["eval"] = MetricAccumulator()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        reduced = self._metrics["eval"].reduce(totals={"num_tokens"})
        reduced.pop("num_tokens", None)
        output.metrics.update({f"{prefix}_{k}": v for k, v in reduced.items()})
        if self.state.global_step > 0:
            for extra in self.eval_extras:
                output.metrics.update({f"{prefix}_{k}": v for k, v in extra().items()})
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training logging step: every rank reaches this point together
            reduced = self._metrics["train"].reduce(totals={"num_tokens"})
            now = time.perf_counter()
            tokens = reduced.pop("num_tokens", 0.0)
            logs.update(reduced)
            logs["tokens_per_second"] = tokens / max(now - self._last_log, 1e-9)
            self._last_log = now
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the model as the Trainer does, plus the loss module's state (LCPO's eta, a mask network).

        Every rank calls this; as for the model, only the writer rank writes (the others may not have the folder)."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_loss_state(self.loss_module, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_loss_state(self.loss_module, resume_from_checkpoint)

    def train_tokens(self) -> float:
        """Tokens processed in training by all ranks (call on every rank: it all-reduces)."""
        acc = MetricAccumulator()
        acc.add_total("tokens", self._local_train_tokens)
        return acc.reduce(totals={"tokens"}).get("tokens", 0.0)
