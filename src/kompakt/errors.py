"""The exceptions kompakt raises for user errors.

Every message says what was expected, what was found and what to do; the CLI prints it as one
line (no traceback unless `--debug`).
"""


class KompaktError(Exception):
    """Base class of every error kompakt raises on purpose."""


class ConfigError(KompaktError, ValueError):
    """An argument or configuration value is out of its valid range."""


class ShapeError(KompaktError, ValueError):
    """A tensor or array does not have the expected shape, rank or dtype."""


class DataError(KompaktError):
    """A dataset file is missing, truncated or inconsistent."""


class CheckpointError(KompaktError):
    """A checkpoint is corrupt, foreign or from an incompatible version."""


class NotFoundError(KompaktError, KeyError):
    """A name is not in a registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailable(KompaktError):
    """A backend's package or device is missing here; the message says how to get it."""
