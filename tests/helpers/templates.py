"""Offline tokenizers of three chat-template families (a tiny BPE from po.models.tokenizer with each family's
special tokens, BOS behaviour and chat template): Llama-3 (BOS in the template, <|eot_id|> ends turns), Qwen2 /
ChatML (no BOS, <|im_end|> then a newline ends turns, a default system turn), Mistral ([INST] ... [/INST], </s>
after the answer)."""

from __future__ import annotations

from tokenizers import processors

from po.models.tokenizer import build_tiny_tokenizer

CORPUS = ["hello there, how are you today?", "the cat sat on the mat.", "Tell me about rivers.",
          "Rivers flow to the sea.", "No."] * 4

LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QWEN2 = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n"
         "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def styled_tokenizer(style: str):
    """A tiny tokenizer with one family's special tokens, BOS behaviour and chat template."""
    tok = build_tiny_tokenizer(CORPUS, vocab_size=320)
    backend = tok.backend_tokenizer
    if style == "llama3":
        tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
        backend.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
        tok.chat_template = LLAMA3
    elif style == "qwen2":
        tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                "additional_special_tokens": ["<|im_start|>"]})
        tok.bos_token = None
        backend.post_processor = processors.ByteLevel(trim_offsets=False)  # adds no special token
        tok.chat_template = QWEN2
    elif style == "mistral":
        tok.chat_template = MISTRAL  # <s> / </s> from the tiny tokenizer, BOS added by the post-processor
    return tok
