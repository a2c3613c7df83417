"""Parity of po's losses with TRL 1.16 on the same tiny model, reference and token ids (to 1e-5).

Each test runs TRL's own trainer `compute_loss` on a batch collated by TRL's collator and po's `pair_loss` on the
same pairs collated by `PairCollator`: same policy (a seeded perturbation of the reference), same reference, same
ids (unequal lengths, one-token responses). Loss and the batch means of chosen/rejected rewards are compared.

Parity holds on identical token ids. The last tests pin how the ids differ when po and TRL each tokenize the same
chat data (Llama-3, Qwen2/ChatML and Mistral templates), and that DPO parity holds once TRL is given po's ids.

Run: `python -m pytest tests/unit/losses/test_trl_parity.py -q`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from losses.dpo import DPOLoss
from losses.hinge import HingeLoss
from losses.ipo import IPOLoss
from losses.ln_dpo import LNDPOLoss
from losses.robust import RobustDPOLoss
from losses.simpo import SimPOLoss
from po.data.collate import PairCollator
from po.models.policy import build_tiny_model
from po.models.tokenizer import load_tokenizer
from po.step.pair_batch import pair_loss
from po.step.reference import FrozenModelReference
from tests.helpers.runs import compose_cfg

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

TOL = dict(rtol=1e-5, atol=1e-5)
# (prompt, chosen, rejected) lengths: unequal everywhere, one-token responses on both sides.
LENGTHS = [(4, 6, 2), (3, 1, 5), (5, 3, 1), (2, 7, 4)]


@pytest.fixture(scope="module")
def setup():
    """Tokenizer, reference model, a policy that differs from it, and pre-tokenized pairs."""
    cfg = compose_cfg()
    tokenizer = load_tokenizer(cfg.model)
    reference = build_tiny_model(cfg.model, tokenizer, seed=0).eval()
    policy = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    low = len(tokenizer.all_special_ids) + 1  # ordinary tokens only

    def ids(n):
        return torch.randint(low, len(tokenizer), (n,), generator=gen).tolist()

    examples = [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r), "row_id": i}
                for i, (p, c, r) in enumerate(LENGTHS)]
    return tokenizer, policy, reference, examples


def po_output(setup, loss):
    """po's LossOutput for the pairs, on private copies of the models (chunk of 5 positions: several chunks)."""
    tokenizer, policy, reference, examples = setup
    batch = PairCollator(tokenizer.pad_token_id)(examples)
    ref = FrozenModelReference(copy.deepcopy(reference)) if loss.needs_reference else None
    return pair_loss(copy.deepcopy(policy).train(), batch, loss, ref, chunk_size=5), batch


def lengths(batch):
    """Response token counts of the chosen and the rejected rows of a PairCollator batch."""
    counts = batch["response_mask"].sum(-1).float()
    half = counts.shape[0] // 2
    return counts[:half], counts[half:]


def trl_dpo(setup, tmp_path, loss_type: str, beta: float, label_smoothing: float = 0.0):
    """TRL DPOTrainer's loss and logged reward means on the same pairs."""
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer, policy, reference, examples = setup
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False,
                     loss_type=[loss_type], beta=beta, label_smoothing=label_smoothing, max_length=None,
                     disable_tqdm=True, save_strategy="no")
    dummy = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello there", "rejected": "No"}])
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=dummy, processing_class=copy.deepcopy(tokenizer))
    collated = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in examples])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, collated)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), metrics


@pytest.mark.parametrize("loss_type,loss,normalized_rewards", [
    ("sigmoid", DPOLoss(beta=0.1), False),
    ("sigmoid", DPOLoss(beta=2.0), False),
    ("ipo", IPOLoss(beta=0.1), True),
    ("sigmoid_norm", LNDPOLoss(beta=5.0), True),
    ("hinge", HingeLoss(beta=0.1), False),
    ("hinge", HingeLoss(beta=3.0), False),
    ("robust", RobustDPOLoss(beta=0.1, label_smoothing=0.2), False),
], ids=["dpo", "dpo-beta2", "ipo", "ln_dpo", "hinge", "hinge-active-and-inactive", "robust"])
def test_dpo_family_matches_trl(setup, tmp_path, loss_type, loss, normalized_rewards):
    """Loss and chosen/rejected reward means equal TRL's DPOTrainer on the same model, reference and ids.

    TRL logs `beta * rho(y)` (summed) for every loss type; po logs beta times the score its loss compares, which for
    IPO and LN-DPO is the per-token mean `beta * rho(y)/|y|`: those rewards are compared after multiplying by |y|.
    """
    out, batch = po_output(setup, loss)
    eps = getattr(loss, "label_smoothing", 0.0)
    trl_loss, metrics = trl_dpo(setup, tmp_path, loss_type, loss.beta, eps)
    assert out.per_pair.isfinite().all()
    torch.testing.assert_close(out.per_pair.mean(), trl_loss.to(out.per_pair.dtype), **TOL)
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    if normalized_rewards:
        len_c, len_r = lengths(batch)
        chosen, rejected = chosen * len_c, rejected * len_r
    torch.testing.assert_close(chosen.mean().item(), metrics["rewards/chosen"], **TOL)
    torch.testing.assert_close(rejected.mean().item(), metrics["rewards/rejected"], **TOL)
    torch.testing.assert_close(out.metrics["logps/chosen"].mean().item(), metrics["logps/chosen"], **TOL)
    torch.testing.assert_close(out.metrics["logps/rejected"].mean().item(), metrics["logps/rejected"], **TOL)
    # A parity check must not be vacuous: the policy really differs from the reference.
    assert (out.chosen_rewards - out.rejected_rewards).abs().min() > 1e-4


def test_dpo_per_pair_rewards_match_trl_reference_logps(setup, tmp_path):
    """Per-pair (not only mean) DPO rewards: TRL's own reference and policy log-prob sums, pair by pair."""
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer, policy, reference, examples = setup
    out, _ = po_output(setup, DPOLoss(beta=0.1))
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, max_length=None)
    dummy = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello there", "rejected": "No"}])
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=dummy, processing_class=copy.deepcopy(tokenizer))
    collated = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
        [{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in examples])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, collated)
    pol_chosen, pol_rejected = trainer.compute_ref_log_probs(trainer.model, collated)  # no-grad sums of the policy
    torch.testing.assert_close(out.chosen_rewards, 0.1 * (pol_chosen - ref_chosen).float(), **TOL)
    torch.testing.assert_close(out.rejected_rewards, 0.1 * (pol_rejected - ref_rejected).float(), **TOL)


@pytest.mark.parametrize("beta,ratio", [(2.0, 0.5), (10.0, 0.3)])
def test_simpo_matches_trl_cpo(setup, tmp_path, beta, ratio):
    """SimPO equals TRL CPOTrainer(loss_type="simpo", cpo_alpha=0) with TRL's absolute simpo_gamma = beta * ratio."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.utils import DPODataCollatorWithPadding

    tokenizer, policy, _, examples = setup
    out, _ = po_output(setup, SimPOLoss(beta=beta, gamma_beta_ratio=ratio))
    args = CPOConfig(output_dir=str(tmp_path / "cpo"), report_to="none", use_cpu=True, bf16=False,
                     loss_type="simpo", cpo_alpha=0.0, beta=beta, simpo_gamma=beta * ratio, max_length=64,
                     disable_tqdm=True, save_strategy="no")
    dummy = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": "Hello there", "rejected": "No"}])
    trainer = CPOTrainer(model=copy.deepcopy(policy), args=args, train_dataset=dummy,
                         processing_class=copy.deepcopy(tokenizer))
    features = []
    for e in examples:
        row = {}
        for side in ("chosen", "rejected"):
            ids = e["prompt_ids"] + e[f"{side}_ids"]
            row[f"{side}_input_ids"] = ids
            row[f"{side}_attention_mask"] = [1] * len(ids)
            row[f"{side}_labels"] = [-100] * len(e["prompt_ids"]) + e[f"{side}_ids"]
        features.append(row)
    collated = DPODataCollatorWithPadding(pad_token_id=tokenizer.pad_token_id)(features)
    trainer.model.train()
    trl_loss, metrics = trainer.compute_loss(trainer.model, collated, return_outputs=True)
    torch.testing.assert_close(out.per_pair.mean(), trl_loss.detach().float(), **TOL)
    torch.testing.assert_close(out.chosen_rewards.mean().item(), metrics["rewards/chosen"], **TOL)
    torch.testing.assert_close(out.rejected_rewards.mean().item(), metrics["rewards/rejected"], **TOL)
    assert (out.chosen_rewards - out.rejected_rewards).abs().min() > 1e-4


# ---- Chat templates: which token ids each toolkit trains on, and parity on po's ids ----
#
# po trains on the assistant's content plus the template's end-of-turn token and nothing after it
# (po/data/tokenize.py). TRL 1.16 keeps what the template renders after the end-of-turn token: DPOTrainer takes the
# rendered conversation's tokens after the prompt; CPOTrainer does the same on the text, then appends EOS unless the
# last token already is EOS. The three template families of tests/unit/data/test_data_templates.py, two conversations:
TRL_EXTRA_TRAILING_TEXT = {  # family -> (what DPOTrainer trains on after po's response, what CPOTrainer does)
    "llama3": ("", ""),
    "qwen2": ("\n", "\n<|im_end|>"),
    "mistral": ("", ""),
}


def _turns(prompt: str, chosen: str, rejected: str) -> tuple[list[dict], list[dict], list[dict]]:
    return ([{"role": "user", "content": prompt}], [{"role": "assistant", "content": chosen}],
            [{"role": "assistant", "content": rejected}])


CONVERSATIONS = [_turns("Tell me about rivers.", "Rivers flow to the sea.", "No."),
                 _turns("hello there, how are you today?", "the cat sat on the mat.", "No.")]


@pytest.fixture(scope="module", params=sorted(TRL_EXTRA_TRAILING_TEXT))
def family(request, tmp_path_factory):
    """One template family: (style, setup tuple as `setup` on po's ids, TRL DPOTrainer rows, TRL CPOTrainer rows)."""
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from po.data.pairs import Pair
    from po.data.tokenize import tokenize_pair
    from tests.helpers.templates import styled_tokenizer

    style = request.param
    tokenizer = styled_tokenizer(style)
    reference = build_tiny_model(compose_cfg().model, tokenizer, seed=0).eval()
    policy = copy.deepcopy(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    po_examples = []
    for i, (prompt, chosen, rejected) in enumerate(CONVERSATIONS):
        tp = tokenize_pair(Pair(prompt, chosen, rejected, f"row {i}"), tokenizer)
        po_examples.append({"prompt_ids": tp.prompt_ids, "chosen_ids": tp.chosen_ids, "rejected_ids": tp.rejected_ids,
                            "row_id": i})
    rows = datasets.Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in CONVERSATIONS])
    out = tmp_path_factory.mktemp(style)
    dpo = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), train_dataset=rows,
                     args=DPOConfig(output_dir=str(out / "dpo"), report_to="none", use_cpu=True, max_length=None),
                     processing_class=copy.deepcopy(tokenizer))
    cpo = CPOTrainer(model=copy.deepcopy(policy), train_dataset=rows,
                     args=CPOConfig(output_dir=str(out / "cpo"), report_to="none", use_cpu=True, max_length=512),
                     processing_class=copy.deepcopy(tokenizer))
    return style, (tokenizer, policy, reference, po_examples), list(dpo.train_dataset), list(cpo.train_dataset)


def cpo_split(row: dict, side: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one side of a CPOTrainer row: the response is where labels are not -100."""
    ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
    return [i for i, label in zip(ids, labels) if label == -100], [i for i, label in zip(ids, labels) if label != -100]


def test_trl_tokenizes_chat_templates_with_these_trailing_ids(family):
    """Same conversation, each toolkit tokenizing it itself: the prompts are identical and each response differs from
    po's only by the trailing tokens listed in TRL_EXTRA_TRAILING_TEXT (po: content + end-of-turn token)."""
    style, (tokenizer, _, _, po_examples), dpo_rows, cpo_rows = family
    dpo_extra, cpo_extra = (tokenizer(text, add_special_tokens=False)["input_ids"]
                            for text in TRL_EXTRA_TRAILING_TEXT[style])
    for po_row, dpo_row, cpo_row in zip(po_examples, dpo_rows, cpo_rows, strict=True):
        assert dpo_row["prompt_ids"] == po_row["prompt_ids"]
        for side in ("chosen", "rejected"):
            assert dpo_row[f"{side}_ids"] == po_row[f"{side}_ids"] + dpo_extra, (style, side)
            prompt_ids, response_ids = cpo_split(cpo_row, side)
            assert prompt_ids == po_row["prompt_ids"]
            assert response_ids == po_row[f"{side}_ids"] + cpo_extra, (style, side)


def test_dpo_matches_trl_on_pos_chat_template_ids(family, tmp_path):
    """Given po's token ids, TRL's DPOTrainer loss equals po's to 1e-5 for every family. When TRL tokenizes the text
    itself, the loss is the same only where the ids are (Llama-3, Mistral); on ChatML its extra "\\n" token moves it."""
    style, setup, dpo_rows, _ = family

    out, _ = po_output(setup, DPOLoss(beta=0.1))
    trl_loss, metrics = trl_dpo(setup, tmp_path, "sigmoid", 0.1)
    torch.testing.assert_close(out.per_pair.mean(), trl_loss.to(out.per_pair.dtype), **TOL)
    torch.testing.assert_close(out.chosen_rewards.mean().item(), metrics["rewards/chosen"], **TOL)
    torch.testing.assert_close(out.rejected_rewards.mean().item(), metrics["rewards/rejected"], **TOL)
    assert (out.chosen_rewards - out.rejected_rewards).abs().min() > 1e-4

    tokenizer, policy, reference, _ = setup
    own_ids = [{k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in dpo_rows]
    own_loss, _ = trl_dpo((tokenizer, policy, reference, own_ids), tmp_path / "own", "sigmoid", 0.1)
    gap = abs(own_loss.item() - out.per_pair.mean().item())
    print(f"{style}: |TRL DPO loss on its own tokenization - po's| = {gap:.2e}")
    if TRL_EXTRA_TRAILING_TEXT[style][0]:
        assert gap > 1e-4
    else:
        assert gap < 1e-5
