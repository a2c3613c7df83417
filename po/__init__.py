"""po: preference-optimization fine-tuning on one `transformers.Trainer`, with pluggable losses (`losses/`)."""

import logging

# transformers imports peft, which imports bitsandbytes; on CPU-only machines its optional 4-bit CPU kernel logs a
# warning on every start. QLoRA needs CUDA here anyway (checked at config time), so keep the start-up quiet.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
