"""What the throughput benchmarks share (recipes/bench_vs_trl.py, recipes/bench_lists.py): the random model and
word-level tokenizer they build offline, the model-shape arguments, a per-step timer, and running one measurement in
its own process (so its peak memory is its own peak RSS)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE_SHAPE = {"vocab": 256, "hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 2}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's shape (a Llama-shaped 4-layer model by default, where the forward dominates), dtype, device,
    threads, and the hidden flags of a measurement's own process."""
    parser.add_argument("--smoke", action="store_true", help="tiny model, short sequences, 2 steps")
    parser.add_argument("--arch", default="llama")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)


def parse_model_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed arguments, the model shrunk with `--smoke`."""
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE_SHAPE)
    return args


def passthrough(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The flags that repeat `names` and the shared settings to a measurement's own process."""
    flags = [f"--{name}={getattr(args, name)}" for name in (*names, "dtype", "device", "threads")]
    return flags + (["--smoke"] if args.smoke else [])


def build_tokenizer(vocab: int, out: Path) -> None:
    """A word-level tokenizer over the words t0..t{vocab-4}, with pad, eos and unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    words = {tok: i for i, tok in enumerate(specials + [f"t{i}" for i in range(vocab - len(specials))])}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out)


def build_model(args: argparse.Namespace, out: Path) -> int:
    """A seeded random model of the arguments' shape, saved to `out`; returns its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        args.arch, vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def step_timer(wall: list[float], cpu: list[float]):
    """A TrainerCallback appending each optimizer step's wall-clock and process CPU seconds. On a shared machine the
    CPU time is the steadier figure: waiting for a core another job holds counts in the wall clock only."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            wall.append(time.perf_counter() - self.t)
            cpu.append(time.process_time() - self.c)

    return StepTimer()


def run_measurement(script: str, flags: list[str], result: Path, passthrough: list[str], what: str) -> dict:
    """Run `script --worker ... --result RESULT` in its own offline process; its JSON result, or exit naming `what`
    with the process's last output."""
    cmd = [sys.executable, script, *flags, "--result", str(result), *passthrough]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())
