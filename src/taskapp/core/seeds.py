"""Seed lists: ``"0-29,40,50-59"`` strings, ranges and lists, and a gepa DataLoader.

The one seed-spec parser of taskapp: ``taskapp eval --seeds``, ``taskapp check --seeds``,
:func:`taskapp.evaluate` and the optimizer all read seeds here.

>>> parse_seeds("0-3,7")
[0, 1, 2, 3, 7]
>>> parse_seeds(range(2))
[0, 1]
>>> parse_seeds({"start": 5, "end": 8})
[5, 6, 7]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from taskapp.core.errors import ConfigurationError

__all__ = ["SeedLoader", "SeedsLike", "format_seeds", "known_seeds", "parse_seeds"]

SeedsLike = str | Iterable[int] | Mapping[str, int]

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
MAX_SEEDS = 100_000


def parse_seeds(value: SeedsLike, *, what: str = "seeds") -> list[int]:  # noqa: C901 -- complexity 17 at most (issue 21 ratchet); split when next changed
    """Turn a seed specification into a list of distinct non-negative ints, in order.

    Accepted: ``"0-29,40"`` (ranges are inclusive), an iterable of ints (``range(30)``),
    or ``{"start": 0, "end": 30}`` (end exclusive, as in Synth configs).
    """
    seeds: list[int] = []
    if isinstance(value, str):
        if not value.strip():
            raise ConfigurationError(f"{what} is empty; give seeds like '0-29' or '0,3,5'")
        for part in value.split(","):
            match = _PART.match(part)
            if match is None:
                raise ConfigurationError(
                    f"{what}: {part.strip()!r} is not a seed or an inclusive range like '0-29'"
                )
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) is not None else first
            if last < first:
                raise ConfigurationError(f"{what}: range {part.strip()!r} runs backwards")
            if last - first + len(seeds) >= MAX_SEEDS:
                raise ConfigurationError(f"{what}: more than {MAX_SEEDS} seeds")
            seeds.extend(range(first, last + 1))
    elif isinstance(value, Mapping):
        try:
            start, end = int(value["start"]), int(value["end"])
        except (KeyError, TypeError, ValueError):
            raise ConfigurationError(
                f"{what}: a mapping must look like {{'start': 0, 'end': 30}}"
            ) from None
        seeds = list(range(start, end))
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigurationError(
                f"{what} must be a string like '0-29', a range or a list of ints, "
                f"got {type(value).__name__}"
            ) from None
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int):
                raise ConfigurationError(f"{what}: {item!r} is not an integer seed")
            seeds.append(item)
    if not seeds:
        raise ConfigurationError(f"{what} is empty")
    if any(seed < 0 for seed in seeds):
        raise ConfigurationError(f"{what}: seeds must be >= 0")
    seen: set[int] = set()
    duplicates: list[int] = []
    for seed in seeds:
        if seed in seen:
            duplicates.append(seed)
        seen.add(seed)
    if duplicates:
        shown = ", ".join(map(str, sorted(set(duplicates))[:5]))
        raise ConfigurationError(f"{what}: seed(s) listed twice: {shown}")
    return seeds


def format_seeds(seeds: Iterable[int]) -> str:
    """The compact form of a set of seeds, sorted: ``[5, 0, 1, 2]`` -> ``"0-2,5"``.

    >>> format_seeds([5, 0, 1, 2, 7, 8])
    '0-2,5,7-8'
    """
    parts: list[str] = []
    start = prev = None
    for seed in sorted(set(seeds)):
        if start is None:
            start = prev = seed
        elif prev is not None and seed == prev + 1:
            prev = seed
        else:
            parts.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = seed
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(parts)


def known_seeds(taskset: object) -> set[int] | None:
    """The seeds a task set (``GET /task_info`` without a seed) says exist, if it says.

    Read from ``seed_range`` ([start, end), end exclusive), else ``size`` (seeds
    0..size-1), else the union of the splits' seed lists. None when it does not tell
    (for example splits given only as sizes).

    >>> sorted(known_seeds({"seed_range": [0, 3]}))
    [0, 1, 2]
    >>> known_seeds({"splits": {"train": 8}}) is None
    True
    """
    if not isinstance(taskset, Mapping):
        return None
    bounds = taskset.get("seed_range")
    if (
        isinstance(bounds, list | tuple)
        and len(bounds) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
    ):
        return set(range(bounds[0], bounds[1]))
    size = taskset.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        return set(range(size))
    splits = taskset.get("splits")
    if not isinstance(splits, Mapping) or not splits:
        return None
    found: set[int] = set()
    for value in splits.values():
        seeds = value.get("seeds") if isinstance(value, Mapping) else value
        if not isinstance(seeds, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds
        ):
            return None  # sizes only: the seeds of a split are not known
        found.update(seeds)
    return found or None


class SeedLoader:
    """A gepa ``DataLoader`` whose ids are the seeds, so every id in results is a seed."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = list(seeds)

    def all_ids(self) -> list[int]:
        return list(self.seeds)

    def fetch(self, ids: Sequence[int]) -> list[int]:
        return list(ids)

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        return f"SeedLoader({format_seeds(self.seeds)!r})"
