"""The shipped toy preference set: chat-format pairs with a signal a tiny model learns in a minute.

Rule: the chosen answer talks about the asked subject in a helpful tone; the rejected one is either curt and
unhelpful (most pairs) or helpful but about another subject. Lengths vary independently of the label, so length
alone does not decide. Regenerate the shipped file with `python -m po.data.toy` (deterministic).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOY_PATH = Path(__file__).with_name("toy_preferences.jsonl")

SUBJECTS = [
    "cats", "dogs", "rivers", "mountains", "bread", "tea", "coffee", "trains", "bicycles", "stars",
    "oceans", "forests", "apples", "honey", "owls", "whales", "clocks", "bridges", "gardens", "books",
    "violins", "deserts", "volcanoes", "snow", "rain", "maps", "lamps", "boats", "kites", "cheese",
    "robots", "castles", "islands", "tigers", "bees", "roses", "clouds", "caves", "lakes", "windmills",
]
ASKS = [
    "Tell me about {s}.", "What do you know about {s}?", "Describe {s} briefly.", "Give me a fact about {s}.",
    "Can you explain {s} to a child?", "Why do people like {s}?",
]
GOOD_OPENINGS = ["Happy to help!", "Good question.", "Sure, here is a short answer.", "Of course."]
GOOD_BODIES = [
    "{S} are interesting, and many people enjoy learning about {s}.",
    "People study {s} because {s} teach us something new.",
    "A nice fact: {s} have a long history and {s} appear in many stories.",
    "{S} can be found in many places, and {s} are worth a closer look.",
]
GOOD_CLOSINGS = ["", " I hope this helps.", " Let me know if you want more about {s}.", " Thanks for asking."]
CURT = [
    "No.", "I will not answer that.", "Figure it out yourself.", "That is a boring question.",
    "Whatever. Ask someone else.", "I do not care about that at all, stop asking me things like this.",
]


def _helpful(subject: str, rng: random.Random) -> str:
    text = " ".join([rng.choice(GOOD_OPENINGS), rng.choice(GOOD_BODIES)]) + rng.choice(GOOD_CLOSINGS)
    return text.replace("{S}", subject.capitalize()).replace("{s}", subject)


def make_pair(rng: random.Random) -> dict:
    """One pair: a user prompt, a helpful on-topic answer (chosen), and a curt or off-topic answer (rejected)."""
    subject = rng.choice(SUBJECTS)
    prompt = rng.choice(ASKS).format(s=subject)
    chosen = _helpful(subject, rng)
    if rng.random() < 0.7:
        rejected = rng.choice(CURT)
    else:
        rejected = _helpful(rng.choice([s for s in SUBJECTS if s != subject]), rng)
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def make_list(rng: random.Random, k: int = 4) -> dict:
    """One ranked list of `k` (2-4) responses, scores by the toy rule: helpful on topic (3) > helpful on another
    subject (2) > a long curt answer (1) > a short curt one (0)."""
    subject = rng.choice(SUBJECTS)
    candidates = [(_helpful(subject, rng), 3.0),
                  (_helpful(rng.choice([s for s in SUBJECTS if s != subject]), rng), 2.0),
                  (rng.choice(CURT[3:]), 1.0), (rng.choice(CURT[:3]), 0.0)][:k]
    rng.shuffle(candidates)
    return {"prompt": [{"role": "user", "content": rng.choice(ASKS).format(s=subject)}],
            "responses": [[{"role": "assistant", "content": text}] for text, _ in candidates],
            "scores": [score for _, score in candidates]}


def generate_lists(n: int = 200, seed: int = 0, k: int = 4) -> list[dict]:
    """`n` ranked lists of `k` responses from a fixed seed (tests and recipes/ write them where they need them)."""
    rng = random.Random(seed)
    return [make_list(rng, k) for _ in range(n)]


def generate(n: int = 1200, seed: int = 0) -> list[dict]:
    """`n` pairs from a fixed seed (the shipped file is `generate()`)."""
    rng = random.Random(seed)
    return [make_pair(rng) for _ in range(n)]


def write(path: Path = TOY_PATH, n: int = 1200, seed: int = 0) -> Path:
    with open(path, "w") as f:
        for row in generate(n, seed):
            f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write()}")
