"""Exceptions purify raises on purpose; the CLI prints their message as one line and exits non-zero."""
from __future__ import annotations


class PurifyError(Exception):
    """Base class for every error that is the user's input, not a bug in purify."""


class CheckpointError(PurifyError):
    """A model folder is missing, broken, unsafe or of an unsupported kind."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint would need pickle deserialisation or remote code, which purify refuses by default."""


class UnsupportedArchitectureError(PurifyError):
    """Head gates do not know how to find the attention blocks of this architecture."""


class DataError(PurifyError):
    """A data file is missing or has a malformed line."""


class ExportError(PurifyError):
    """Writing or verifying a sanitized checkpoint failed."""


class ConfigError(PurifyError):
    """A strategy or filter configuration value is invalid."""


class CanaryError(PurifyError):
    """`purify tune` could not plant its canary backdoor (ASR too low or clean accuracy lost)."""
