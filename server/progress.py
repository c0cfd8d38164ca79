"""The progress line lives in :mod:`sealog.client.progress` (monitors use it too)."""

from __future__ import annotations

from sealog.client.progress import Progress

__all__ = ["Progress"]
