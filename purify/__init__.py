"""purify: purify already-backdoored transformer checkpoints after the fact."""
from __future__ import annotations

__version__ = "0.1.0"
