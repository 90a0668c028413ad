"""Backbone, adapters, prompts and the MVFA forward on a tiny random ViT."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvfa_lite.config import MVFAConfig, preset
from mvfa_lite.errors import WeightsError
from mvfa_lite.method.adapters import Adapter, AdapterBanks
from mvfa_lite.method.backbone import default_levels, load_backbone
from mvfa_lite.method.model import MVFA
from mvfa_lite.method.prompts import (
    ABNORMAL_STATES,
    NORMAL_STATES,
    TEMPLATES,
    state_sentences,
)


def test_shapes_through_every_level(tiny_model):
    images = torch.rand(3, 3, 240, 240)
    features = tiny_model(images)
    assert tiny_model.levels == (1, 2, 3, 4)
    assert len(features.seg) == len(features.det) == 4
    for seg, det in zip(features.seg, features.det):
        # 1 CLS + 17 x 17 patches at 240 px with patch 14; joint width 64 (vision width 96)
        assert seg.shape == det.shape == (3, 290, 64)


def test_default_levels_are_the_quarters():
    assert default_levels(24) == (6, 12, 18, 24)
    assert default_levels(12) == (3, 6, 9, 12)
    assert default_levels(4) == (1, 2, 3, 4)


def test_custom_levels_and_bad_levels(tiny_config):
    model = MVFA.from_config(tiny_config.replace(levels=(2, 4)))
    assert [f.shape[1] for f in model(torch.rand(1, 3, 240, 240)).seg] == [290, 290]
    with pytest.raises(ValueError, match="increasing"):
        MVFA.from_config(tiny_config.replace(levels=(3, 2)))
    with pytest.raises(ValueError, match="1..4"):
        MVFA.from_config(tiny_config.replace(levels=(2, 9)))


def test_backbone_is_frozen_and_only_adapters_get_gradients(tiny_model):
    assert not any(p.requires_grad for p in tiny_model.backbone.parameters())
    features = tiny_model(torch.rand(2, 3, 240, 240))
    (sum(f.sum() for f in features.seg) + sum(f.sum() for f in features.det)).backward()
    assert all(p.grad is None for p in tiny_model.backbone.parameters())
    assert all(p.grad is not None for p in tiny_model.banks.parameters())
    # 3 residual adapters (W1, W2) + 1 projector (W1 only) per bank, bias-free
    assert tiny_model.trainable_parameters() == 2 * (3 * 2 * 96 * 64 + 96 * 64)


def test_residual_mixing_formula():
    torch.manual_seed(0)
    banks = AdapterBanks(width=6, bottleneck=4, n_levels=2, mix=(0.8, 0.1, 0.1))
    x = torch.randn(2, 5, 6)
    mixed, h_seg, h_det = banks(0, x)
    y_seg = F.leaky_relu(F.leaky_relu(x @ banks.seg[0].down[0].weight.T) @ banks.seg[0].up[0].weight.T)
    y_det = F.leaky_relu(F.leaky_relu(x @ banks.det[0].down[0].weight.T) @ banks.det[0].up[0].weight.T)
    torch.testing.assert_close(mixed, 0.8 * x + 0.1 * y_seg + 0.1 * y_det)
    torch.testing.assert_close(h_seg, F.leaky_relu(x @ banks.seg[0].down[0].weight.T))
    # the last level is a projector: the stream passes unchanged, no W2 exists
    out, _, _ = banks(1, x)
    assert torch.equal(out, x) and banks.seg[1].up is None


def test_projector_ablation_leaves_the_stream_untouched(tiny_config):
    """mix = (1, 0, 0): every level sees the frozen features (independent projectors)."""
    model = MVFA.from_config(tiny_config.replace(mix=(1.0, 0.0, 0.0)))
    images = torch.rand(1, 3, 240, 240)
    with torch.no_grad():
        features = model(images)
        x = model.backbone.embed(images, normalize=False)
        for block in model.backbone.blocks[:3]:
            x = block(x)
    torch.testing.assert_close(features.seg[2], model.banks.seg[2].down(x))


def test_adapter_projector_has_no_up_layer():
    h, y = Adapter(8, 4, residual=False)(torch.randn(1, 3, 8))
    assert h.shape == (1, 3, 4) and y is None


def test_stem_cache_gives_the_same_features(tiny_model):
    images = torch.rand(2, 3, 240, 240)
    direct = tiny_model(images)
    cached = tiny_model(stem=tiny_model.stem(images))
    for a, b in zip(direct.seg + direct.det, cached.seg + cached.det):
        torch.testing.assert_close(a, b)


def test_pixel_normalisation_follows_the_protocol(tiny_config):
    paper = MVFA.from_config(tiny_config)
    corrected = MVFA.from_config(tiny_config.replace(protocol="corrected"))
    images = torch.rand(1, 3, 240, 240)
    assert not torch.allclose(paper.stem(images), corrected.stem(images))
    normalised = (images - paper.backbone.pixel_mean) / paper.backbone.pixel_std
    torch.testing.assert_close(corrected.stem(images), paper.stem(normalised))


def test_prompt_ensemble_is_a_normalised_mean(tiny_model):
    text = tiny_model.text_features("Brain")
    assert text.shape == (64, 2)
    torch.testing.assert_close(text.norm(dim=0), torch.ones(2))
    sentences = state_sentences("Brain", ABNORMAL_STATES, TEMPLATES)
    assert len(sentences) == 5 * 35 and "a bad photo of a damaged Brain." in sentences
    assert len(state_sentences("Brain", NORMAL_STATES, TEMPLATES)) == 7 * 35
    encoded = tiny_model.backbone.encode_text(sentences)
    torch.testing.assert_close(encoded.norm(dim=1), torch.ones(175))
    torch.testing.assert_close(text[:, 1], F.normalize(encoded.mean(0), dim=0))
    assert tiny_model.text_features("Brain") is text          # cached, not recomputed
    assert not torch.allclose(tiny_model.text_features("Liver"), text)


def test_any_open_clip_vit_from_a_checkpoint_file_with_resized_positions(tmp_path):
    """Weights from a file; the 14 x 14 position grid of a 224-px ViT resized to 240 px."""
    import open_clip
    native = open_clip.create_model("ViT-S-16", pretrained=None)
    path = tmp_path / "vit-s-16.pt"
    torch.save(native.state_dict(), path)
    backbone = load_backbone("ViT-S-16", "random-file", image_size=240, checkpoint=path)
    assert backbone.grid == 15 and backbone.identity["weights"] == str(path)
    assert not backbone.identity["weights_random"]
    old = native.visual.positional_embedding.detach()
    grid = old[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(15, 15), mode="bicubic", antialias=True,
                            align_corners=False).permute(0, 2, 3, 1).reshape(225, -1)
    new = backbone.clip.visual.positional_embedding.detach()
    torch.testing.assert_close(new[0], old[0])
    torch.testing.assert_close(new[1:], resized)
    model = MVFA(backbone, MVFAConfig(model_name="ViT-S-16", pretrained="random-file"))
    assert model.levels == (3, 6, 9, 12)
    assert model(torch.rand(1, 3, 240, 240)).seg[0].shape == (1, 226, backbone.embed_dim)


def test_missing_weights_say_how_to_supply_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MVFA_CLIP_CHECKPOINT", raising=False)
    with pytest.raises(WeightsError, match="--clip-checkpoint"):
        load_backbone("ViT-B-32", "openai", 224)                 # offline: download fails
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone("ViT-B-32", "openai", 224, checkpoint=tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="is a directory, not a weights file"):
        load_backbone("ViT-B-32", "openai", 224, checkpoint=tmp_path)
    monkeypatch.setenv("MVFA_CLIP_CHECKPOINT", str(tmp_path / "env.pt"))
    with pytest.raises(WeightsError, match="env.pt"):
        load_backbone("ViT-B-32", "openai", 224)
    with pytest.raises(WeightsError, match="unknown open_clip model"):
        load_backbone("ViT-Q-99", "openai", 224)


def test_random_weights_are_flagged(tiny_model):
    assert tiny_model.identity["weights_random"] is True
    from mvfa_lite.protocols.experiment import weights_banner
    assert "RANDOM WEIGHTS" in weights_banner(tiny_model)


def test_protocol_table():
    paper, corrected = MVFAConfig(), MVFAConfig(protocol="corrected")
    assert (paper.normalize_pixels, paper.quick_gelu, paper.bce_on, paper.bank_includes_cls,
            paper.image_score, paper.selection) == (False, False, "logits", True, "paper", "test")
    assert (corrected.normalize_pixels, corrected.quick_gelu, corrected.bce_on,
            corrected.bank_includes_cls, corrected.image_score, corrected.selection) == \
        (True, None, "probabilities", False, "det", "validation")
    assert MVFAConfig(overrides={"bank_includes_cls": False}).bank_includes_cls is False
    with pytest.raises(ValueError, match="sum to 1"):
        MVFAConfig(mix=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="protocol"):
        MVFAConfig(protocol="other")
    assert preset("fast-cpu").model_name == "tiny-random"


def official_block(block, x):
    """The official code's block: sequence-first (T, B, W), nn.MultiheadAttention asked for
    its weights (need_weights=True, the path that computes softmax(q k^T) explicitly)."""
    attn, x = block.attn, x.transpose(0, 1)
    h = block.ln_1(x)
    out, _ = torch.nn.functional.multi_head_attention_forward(
        h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias,
        None, None, False, 0.0, attn.out_proj.weight, attn.out_proj.bias, training=False,
        need_weights=True)
    x = x + block.ls_1(out)
    return (x + block.ls_2(block.mlp(block.ln_2(x)))).transpose(0, 1)


def test_fp32_blocks_are_the_official_arithmetic_bit_for_bit(tiny_model):
    x = torch.randn(3, 290, 96)
    expected = x
    with torch.no_grad():
        for block in tiny_model.backbone.blocks:
            expected = official_block(block, expected)
        assert torch.equal(tiny_model.backbone.run_blocks(x, 0, 4), expected)


def test_low_precision_blocks_match_open_clip_blocks(tiny_model):
    x = torch.randn(3, 290, 96)
    expected = x
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for block in tiny_model.backbone.blocks:
            expected = block(expected)
        torch.testing.assert_close(tiny_model.backbone.run_blocks(x, 0, 4), expected,
                                   rtol=3e-2, atol=3e-2)


def test_openai_torchscript_checkpoint_is_converted(tmp_path, monkeypatch):
    """OpenAI ships TorchScript archives; they load through an extracted state dict."""
    import open_clip
    from torchscript_clip import save_torchscript
    monkeypatch.setenv("MVFA_CACHE", str(tmp_path / "cache"))
    native = open_clip.create_model("ViT-S-16", pretrained=None)
    save_torchscript(native, tmp_path / "openai-style.pt")
    backbone = load_backbone("ViT-S-16", "openai-file", 224, checkpoint=tmp_path / "openai-style.pt")
    torch.testing.assert_close(backbone.clip.visual.conv1.weight, native.visual.conv1.weight)
    assert len(list((tmp_path / "cache").glob("*.state_dict.pt"))) == 1


def test_frozen_weights_cast_once_match_autocast_bit_for_bit(tiny_model):
    """Under bf16 autocast the frozen blocks use a kept bf16 copy of each weight: the same
    numbers as autocast's own cast at every call, refreshed when a weight changes."""
    from mvfa_lite.method import backbone as bb
    blocks = tiny_model.backbone.blocks
    x = torch.randn(2, 290, 96)

    def plain():                                    # open_clip's layers, autocast's casts
        h = x
        for block in blocks:
            h = block(h)
        return h

    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        kept, expected = tiny_model.backbone.run_blocks(x, 0, 4), plain()
        weight = blocks[0].mlp.c_fc.weight
        assert bb._AUTOCAST_COPIES[weight][1].dtype == torch.bfloat16
        weight.mul_(2.0)                                           # changed in place
        changed, expected_changed = tiny_model.backbone.run_blocks(x, 0, 4), plain()
        weight.div_(2.0)
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)
    torch.testing.assert_close(changed, expected_changed, rtol=0, atol=0)
    assert not torch.equal(changed, kept)
    with torch.no_grad():                           # outside autocast: the fp32 weights
        assert tiny_model.backbone.run_blocks(x, 0, 1).dtype == torch.float32


def test_kept_copies_serve_training_after_inference_mode(tiny_model):
    """A copy first made while scoring (inference mode) still serves a training step."""
    x = torch.randn(2, 290, 96)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        tiny_model.backbone.run_blocks(x, 0, 4)
    x.requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        tiny_model.backbone.run_blocks(x, 0, 4).float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
