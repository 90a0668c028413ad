"""mvfa-lite: MVFA (Huang et al., CVPR 2024) on open_clip, batched and device-agnostic.

Reading order, top to bottom: config -> backbone -> adapters -> prompts -> model ->
branches -> losses -> data -> train -> evaluate -> metrics -> experiment -> cli.
"""
from .config import MVFAConfig, preset
from .errors import CheckpointError, DataError, MetricError, MVFAError, WeightsError
from .experiment import load_trained, run_few_shot, run_zero_shot
from .model import MVFA

__version__ = "0.1.0"
__all__ = ["MVFA", "MVFAConfig", "preset", "run_few_shot", "run_zero_shot", "load_trained",
           "MVFAError", "DataError", "WeightsError", "CheckpointError", "MetricError"]
