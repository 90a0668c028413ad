"""Errors that a user can act on.

Every error raised for bad input derives from :class:`MVFAError`. Its message names the
file (or setting) at fault and says how to fix it; the command-line interface prints that
message alone, without a traceback.
"""

import re


class MVFAError(Exception):
    """Base class of every user-facing error in mvfa-lite."""


class ConfigError(MVFAError, ValueError):
    """A setting (a field of MVFAConfig, or a command-line option) has an impossible value."""


class DataError(MVFAError):
    """A dataset folder, image, mask or few-shot selection cannot be used."""


class DataWarning(UserWarning):
    """Data that can be used but is probably not what was meant (empty masks, NaN pixels).
    The message names the files; the command-line interface prints it as one line."""


class WeightsError(MVFAError):
    """CLIP weights cannot be found or downloaded."""


class CheckpointError(MVFAError):
    """An adapter checkpoint is unreadable or belongs to another backbone."""


class OutputError(MVFAError):
    """An output folder cannot be created or written, or would replace an input."""


class MetricError(MVFAError):
    """A metric is undefined for the given labels or scores."""


def unreadable_reason(error: Exception) -> str:
    """Why ``torch.load`` (always ``weights_only=True``) or a state-dict load failed, in a few
    words. torch's own text is never shown: it is many lines long and may advise turning
    ``weights_only`` off, which would let a file run code."""
    text = str(error)
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if code:
        return (f"it refers to Python code ({code.group(1)}), which is refused without running "
                "it (a weights file holds only tensors)")
    mismatch = re.search(r"size mismatch for ([\w.]+)", text)
    if mismatch:
        return f"its tensors have other shapes (first: {mismatch.group(1)})"
    missing = re.search(r'Missing key\(s\) in state_dict: "([\w.]+)"', text)
    if missing:
        return f"it lacks tensors this model needs (first: {missing.group(1)})"
    return "it is not a PyTorch file, or it is damaged (a truncated copy?)"
