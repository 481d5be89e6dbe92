"""Counts in words: ``counted(1, "token")`` is "1 token", ``counted(5, "token")`` "5 tokens"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, singular for exactly one."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
