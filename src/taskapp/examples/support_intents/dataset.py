"""The support-intents data set: 400 labelled customer-support messages, 10 intents.

The messages were written for taskapp and ship with it (``data.jsonl`` next to this file,
one ``{"id", "text", "label"}`` object per line, in a fixed shuffled order). Nothing is
downloaded.

Seeds index the whole data set: seed ``n`` is line ``n`` of ``data.jsonl`` (0 to 399).
The split is a fixed rule of the seed, so it never changes between runs or machines:
``seed % 4 == 3`` is ``test`` (100 examples), every other seed is ``train`` (300).

>>> examples = load_examples()
>>> len(examples), examples[3].split
(400, 'test')
"""

from __future__ import annotations

import dataclasses
import functools
import json
from importlib import resources

__all__ = ["LABELS", "SPLITS", "Example", "load_examples", "seeds_of_split", "split_of"]

#: The intents, in the order the default prompt lists them.
LABELS: tuple[str, ...] = (
    "refund",
    "cancel_subscription",
    "shipping_status",
    "password_reset",
    "billing_issue",
    "product_question",
    "complaint",
    "account_update",
    "technical_issue",
    "order_change",
)

SPLITS: tuple[str, ...] = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Example:
    seed: int
    id: str
    text: str
    label: str
    split: str


def split_of(seed: int) -> str:
    """``test`` for every fourth seed (3, 7, 11, ...), ``train`` otherwise."""
    return "test" if seed % 4 == 3 else "train"


@functools.cache
def load_examples() -> tuple[Example, ...]:
    """Every example, indexed by seed. Read once from the package data, then cached."""
    text = resources.files(__package__).joinpath("data.jsonl").read_text(encoding="utf-8")
    examples = []
    for seed, line in enumerate(line for line in text.splitlines() if line.strip()):
        row = json.loads(line)
        if row["label"] not in LABELS:
            raise ValueError(f"data.jsonl line {seed + 1}: unknown label {row['label']!r}")
        examples.append(Example(seed, row["id"], row["text"], row["label"], split_of(seed)))
    return tuple(examples)


def seeds_of_split(split: str) -> list[int]:
    return [example.seed for example in load_examples() if example.split == split]
