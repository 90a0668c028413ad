"""Errors that a user can act on.

Every error raised for bad input derives from :class:`MVFAError`. Its message names the
file (or setting) at fault and says how to fix it; the command-line interface prints that
message alone, without a traceback.
"""


class MVFAError(Exception):
    """Base class of every user-facing error in mvfa-lite."""


class DataError(MVFAError):
    """A dataset folder, image, mask or few-shot selection cannot be used."""


class WeightsError(MVFAError):
    """CLIP weights cannot be found or downloaded."""


class CheckpointError(MVFAError):
    """An adapter checkpoint is unreadable or belongs to another backbone."""


class MetricError(MVFAError):
    """A metric is undefined for the given labels or scores."""
