"""The tokenizer of the `model` group: the model's own (`model=hf`), or the small one shipped for offline runs.

The shipped tokenizer is a byte-level BPE with a chat template.

Byte-level means any text tokenizes (no unknown tokens), so the tiny model also runs on a user's own JSONL.
The shipped files live in `po/assets/tiny_tokenizer/`; rebuild them with `python -m po.models.tokenizer` (deterministic
given the shipped toy data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from po.data.toy import TOY_PATH
from po.errors import POError

TINY_TOKENIZER_DIR = Path(__file__).parents[1] / "assets" / "tiny_tokenizer"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each turn: role marker, newline, content, EOS. The generation prompt is the assistant marker and a newline,
# so a rendered response is "content</s>": one BOS per conversation, one EOS per response.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def load_tokenizer(cfg: DictConfig):
    """The shipped tiny tokenizer for `model=tiny`, else the model's own (or `model.tokenizer_name_or_path`)."""
    if cfg.kind == "tiny" and not cfg.get("tokenizer_name_or_path"):
        tokenizer = load_tiny_tokenizer()
    else:
        name = cfg.get("tokenizer_name_or_path") or cfg.name_or_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, revision=cfg.get("revision"),
                                                      trust_remote_code=cfg.get("trust_remote_code", False))
        except (OSError, ValueError) as exc:
            raise not_found("tokenizer", name, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def not_found(kind: str, name: str, exc: Exception) -> POError:
    """One line for a tokenizer or model that is neither a local folder nor in the Hugging Face cache."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    reason = "offline mode is set (HF_HUB_OFFLINE)" if offline else "the Hugging Face Hub could not be reached"
    return POError(
        f"{kind} '{name}' was not found as a local folder or in the Hugging Face cache, and {reason}. "
        f"Download it on a machine with network access (then it is read from the cache) or pass a local path. "
        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    )


def build_tiny_tokenizer(corpus: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens on `corpus` and wrap it with BOS/EOS and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def toy_corpus() -> list[str]:
    """Every string of the shipped toy set, the tokenizer's training text."""
    texts = []
    for line in TOY_PATH.read_text().splitlines():
        row = json.loads(line)
        for key in ("prompt", "chosen", "rejected"):
            texts.extend(m["content"] for m in row[key])
    return texts


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped tokenizer (no network)."""
    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR))


if __name__ == "__main__":
    build_tiny_tokenizer(toy_corpus()).save_pretrained(str(TINY_TOKENIZER_DIR))
    print(f"wrote {TINY_TOKENIZER_DIR}")
