"""Device selection: CUDA when present, else CPU; overridable with PURIFY_DEVICE."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def select_device(preferred: str | None = None) -> torch.device:
    """Return `preferred`, else $PURIFY_DEVICE, else cuda if available, else cpu."""
    name = preferred or os.environ.get("PURIFY_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so that the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (cpu for a parameter-less module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
