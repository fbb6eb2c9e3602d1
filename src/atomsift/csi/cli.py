"""Verbs of atomsift.csi (filled in by its issue)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this package's verbs to the atomsift parser."""
