"""Errors that name their cause and fix; the CLI prints them as one line instead of a traceback."""


class LightningDMLError(Exception):
    """Base class: a user-facing problem with data or configuration."""


class DataError(LightningDMLError, ValueError):
    """Missing or malformed data: a file, a column, an image, a split."""


class TrainingError(LightningDMLError, RuntimeError):
    """Training cannot continue (for example a non-finite loss)."""


class ConfigError(LightningDMLError, ValueError):
    """A configuration that cannot work: an unknown model name, unreachable pretrained weights."""
