"""--precision: what "auto" picks, and fp16 training that stays finite (with loss scaling)."""
from __future__ import annotations

import pytest
import torch

from mvfa_lite.config import MVFAConfig
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.data.shots import split_off_shots
from mvfa_lite.method.model import MVFA
from mvfa_lite.protocols.train import train_few_shot
from mvfa_lite.runtime import autocast, cpu_precision, grad_scaler, resolve_precision

CPU = torch.device("cpu")


def test_explicit_precisions_are_kept_and_auto_is_measured_on_a_cpu():
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, CPU) == name
    assert resolve_precision("auto", CPU) == cpu_precision() in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision = .half. .--precision. is not possible"):
        resolve_precision("half", CPU)
    with pytest.raises(ValueError, match=r"precision = 'fp8' \(--precision\).*one of auto"):
        MVFAConfig(precision="fp8")


def test_autocast_and_scaler_follow_the_precision():
    x = torch.randn(8, 8)
    with autocast(CPU, "fp16"):
        assert (x @ x).dtype == torch.float16
    with autocast(CPU, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (x @ x).dtype == torch.float32
    assert grad_scaler(CPU, "fp16").is_enabled() and not grad_scaler(CPU, "bf16").is_enabled()


def test_fp16_training_stays_finite_and_lowers_the_loss(tiny_config, synth_root):
    config = tiny_config.replace(precision="fp16", epochs=5, lr=3e-3)
    model = MVFA.from_config(config)
    support, _ = split_off_shots(ADDataset(synth_root, "valid"), 2, seed=0)
    result, _ = train_few_shot(model, support, progress=False)
    losses = [epoch["loss"] for epoch in result.history]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.banks.parameters())
