"""Datasets of arena's local lm-eval tasks: JSONL files next to this module, loaded without
network (no Hugging Face hub, no ``datasets.load_dataset``). The YAML files name these
functions as ``custom_dataset: !function utils.NAME``."""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str) -> dict:
    import datasets

    with open(HERE / f"{name}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def arena_mc(**kwargs) -> dict:
    return _load("arena_mc")


def arena_ppl(**kwargs) -> dict:
    return _load("arena_ppl")


def arena_niah(**kwargs) -> dict:
    return _load("arena_niah")


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEYS = ["apple", "river", "candle", "falcon", "marble", "violet", "harbor", "meadow", "copper", "lantern",
        "orchid", "pepper"]


def make_niah(n: int = 12, seed: int = 0, filler_repeats=(2, 4, 8)) -> list[dict]:
    """The rows of arena_niah.jsonl: one needle "One of the special magic numbers for {key} is:
    {value}." at a seeded depth in ``r`` repeats of the filler, then the question."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        key, value = KEYS[i % len(KEYS)], str(rng.randrange(1_000_000, 10_000_000))
        reps = filler_repeats[i % len(filler_repeats)]
        depth = rng.randrange(reps + 1)
        needle = f"One of the special magic numbers for {key} is: {value}. "
        hay = FILLER * depth + needle + FILLER * (reps - depth)
        prompt = f"{hay}\nWhat is the special magic number for {key}? The special magic number for {key} is: "
        rows.append({"prompt": prompt, "answer": value, "key": key, "depth": depth / reps, "filler_repeats": reps})
    return rows


if __name__ == "__main__":  # regenerate arena_niah.jsonl (deterministic)
    with open(HERE / "arena_niah.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in make_niah())
