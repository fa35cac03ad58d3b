"""Exceptions whose message is shown to the user as a single line (no traceback)."""


class MVMRError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits with code 2."""


class ConfigError(MVMRError):
    """A config key is unknown, mistyped, out of range or inconsistent."""


class DataError(MVMRError):
    """A dataset is missing or malformed; the message says how to obtain it."""


class CheckpointError(MVMRError):
    """A checkpoint is missing or does not match the configured model."""
