"""mvfa-lite: MVFA (Huang et al., CVPR 2024) on open_clip, batched and device-agnostic.

Reading order, top to bottom: config -> backbone -> adapters -> prompts -> model ->
branches -> losses -> images -> data -> shots -> train -> evaluate -> metrics ->
experiment -> cli.
"""
from importlib import import_module

__version__ = "0.1.0"
# name -> module; imported on first use, so that `mvfa-lite --help` and sweep workers start
# without loading torch and open_clip
_EXPORTS = {"MVFAConfig": "config", "preset": "config", "MVFA": "model",
            "run_few_shot": "experiment", "run_zero_shot": "experiment",
            "load_trained": "experiment", "MVFAError": "errors", "DataError": "errors",
            "WeightsError": "errors", "CheckpointError": "errors", "MetricError": "errors"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mvfa_lite' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
