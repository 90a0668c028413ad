"""--compile: torch.compile of the ViT blocks, and how "auto" decides (measured once, kept)."""
from __future__ import annotations

import json

import pytest
import torch

from mvfa_lite.config import MVFAConfig
from mvfa_lite.errors import ConfigError
from mvfa_lite.runtime import COMPILE_GAIN, resolve_compile


def test_on_and_off_are_kept_without_measuring():
    def never():
        raise AssertionError("measured")
    assert resolve_compile("on", {}, never) is True
    assert resolve_compile("off", {}, never) is False
    with pytest.raises(ConfigError, match="--compile"):
        resolve_compile("yes", {}, never)
    with pytest.raises(ConfigError, match="compile"):
        MVFAConfig(compile="always")


def test_auto_measures_once_per_setting_and_keeps_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("MVFA_CACHE", str(tmp_path))
    calls = []

    def measure(eager, compiled):
        def timed():
            calls.append(1)
            return eager, compiled
        return timed
    fast = {"model": "ViT-L-14-336", "precision": "fp32"}
    slow = dict(fast, precision="bf16")
    assert resolve_compile("auto", fast, measure(1.0, 1.0 / (COMPILE_GAIN + 0.1))) is True
    assert resolve_compile("auto", slow, measure(1.0, 1.0)) is False
    assert resolve_compile("auto", fast, measure(1.0, 10.0)) is True      # kept: not measured
    assert len(calls) == 2
    kept = json.loads((tmp_path / "compile.json").read_text())
    assert sorted(round(entry["speedup"], 2) for entry in kept.values()) == [
        1.0, round(COMPILE_GAIN + 0.1, 2)]


def test_compiled_blocks_give_the_eager_features_and_gradients(tiny_model):
    backbone = tiny_model.backbone
    x = torch.randn(2, 290, 96, requires_grad=True)
    eager = backbone.run_blocks(x, 1, 3)
    eager.square().mean().backward()
    eager_grad, x.grad = x.grad.clone(), None
    eager_seconds, compiled_seconds = backbone.compile_timing("fp32", 2)
    assert eager_seconds > 0 and compiled_seconds > 0
    backbone.compile_blocks()
    compiled = backbone.run_blocks(x, 1, 3)
    compiled.square().mean().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, eager_grad, rtol=1e-5, atol=1e-6)


def test_build_model_compiles_where_auto_measured_a_gain(tmp_path, monkeypatch):
    from mvfa_lite.config import preset
    from mvfa_lite.method.backbone import Backbone
    from mvfa_lite.protocols.experiment import build_model
    monkeypatch.setenv("MVFA_CACHE", str(tmp_path))
    for measured, expected in (((2.0, 1.0), True), ((1.0, 1.0), False)):
        monkeypatch.setattr(Backbone, "compile_timing", lambda self, p, end, m=measured: m)
        (tmp_path / "compile.json").unlink(missing_ok=True)
        config = preset("fast-cpu", device="cpu").replace(compile="auto")
        assert build_model(config).backbone.compiled is expected
    assert build_model(config.replace(compile="off")).backbone.compiled is False
