"""Tiny judge models built offline from configs, saved as Hugging Face folders (what `judge.name_or_path` loads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from po.judge.judges import answer_tokens
from po.models.tokenizer import load_tiny_tokenizer

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             max_position_embeddings=512)


def tiny_reward_model(folder: Path, seed: int = 0) -> Path:
    """A random LlamaForSequenceClassification (one label) with the shipped tokenizer (it has a chat template)."""
    tokenizer = load_tiny_tokenizer()
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), num_labels=1,
                                  pad_token_id=tokenizer.pad_token_id, **SIZES)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def first_answer_judge(folder: Path, answers: tuple[str, str] = (" A", " B")) -> Path:
    """A GPT-2 causal LM that always puts almost all probability on the token the pairwise judge reads for the first
    answer (position bias: it always answers "first"): its final layer norm outputs a constant vector, which only
    that token's head row sees."""
    tokenizer = load_tiny_tokenizer()
    config = AutoConfig.for_model("gpt2", vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=512,
                                  tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    token = answer_tokens(tokenizer, answers)[1]
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.ones(32))
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 1.0  # logit 32 for this token, 0 for every other
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
