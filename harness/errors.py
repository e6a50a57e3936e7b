"""User-facing errors: raised for bad input, printed by the CLI as one line without a traceback."""

from __future__ import annotations

__all__ = ["BnasError", "ConfigError", "DataError", "CheckpointError", "NonFiniteLossError"]


class BnasError(Exception):
    """Base class for errors caused by the user's input or environment (not by a bug)."""


class ConfigError(BnasError):
    """A params file or override is malformed: unknown key, wrong type, unreadable YAML."""


class DataError(BnasError):
    """A dataset is missing, corrupt or laid out differently from what is expected."""


class CheckpointError(BnasError):
    """A checkpoint cannot be read or does not fit the run."""


class NonFiniteLossError(BnasError):
    """The training loss became NaN or infinite."""
