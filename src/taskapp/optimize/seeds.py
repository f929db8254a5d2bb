"""Moved to :mod:`taskapp.core.seeds` (the one seed-spec parser); kept importable here."""

from __future__ import annotations

from taskapp.core.seeds import SeedLoader, SeedsLike, format_seeds, known_seeds, parse_seeds

__all__ = ["SeedLoader", "SeedsLike", "format_seeds", "known_seeds", "parse_seeds"]
