"""mvfa-lite: MVFA (Huang et al., CVPR 2024) on open_clip, batched and device-agnostic.

The floor plan, bottom to top (imports point down; import-linter checks it, see
pyproject.toml):

- ``config``, ``errors``, ``runtime``, ``outputs``: the settings as values, the errors,
  device/precision/seeding, output folders and result files;
- ``method/``: the paper (backbone, adapters, prompts, model, branches, losses);
- ``data/``: datasets on disk (layout, folder, images, shots, catalogue, synthlesions);
- ``protocols/``: training, scoring, metrics, checkpoints, whole experiments;
- ``tools/``: the command line, benchmarks, sweeps, the comparison with the official code;
  ``teaching/``: the notebooks' helpers.
"""
from importlib import import_module

__version__ = "0.1.0"
# name -> module; imported on first use, so that `mvfa-lite --help` and sweep workers start
# without loading torch and open_clip
_EXPORTS = {"MVFAConfig": "config", "preset": "config", "MVFA": "method.model",
            "run_few_shot": "protocols.experiment", "run_zero_shot": "protocols.experiment",
            "load_trained": "protocols.experiment", "evaluate_checkpoint": "protocols.experiment",
            "predict": "protocols.experiment", "MVFAError": "errors", "DataError": "errors",
            "WeightsError": "errors", "CheckpointError": "errors", "MetricError": "errors"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mvfa_lite' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
