"""Every knob of MVFA in one dataclass, and the protocols.

The defaults reproduce the official run (``protocol="paper"``): the official code's quirks,
its batch size of 1 and its model-selection schedule. ``protocol="paper-b16"`` is the same with
the batch size quoted for the paper (16). ``protocol="corrected"`` switches the official
code's quirks to what the paper describes or what is plainly right. Each difference is one
derived property below, with one line saying why:

=====================  =======================  ==============================================
property               paper                    corrected, and why
=====================  =======================  ==============================================
normalize_pixels       False                    True: the CLIP weights were trained on
                                                mean/std-normalised pixels.
quick_gelu             False (nn.GELU)          the weights' own activation (QuickGELU for
                                                OpenAI CLIP): GELU changes every feature.
bce_on_probabilities   "logits"                 "probabilities": the class score already is a
                                                probability; BCE-with-logits squashes it into
                                                [0.5, 0.73] and weakens the gradient.
bank_includes_cls      True                     False: test patches never include CLS, so a CLS
                                                entry in the memory bank is an unmatched outlier.
image_score            "paper"                  "det": one rule in every setting; the
                                                classification bank is trained for it.
selection              "test"                   "validation": picking the epoch on the test
                                                labels leaks them (official issue #17).
batch_size             1 (paper-b16: 16)        16 (as quoted for the paper): uses the hardware.
=====================  =======================  ==============================================

``batch_size`` is a plain field: ``None`` (the default) means the protocol's value above.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

from .errors import ConfigError

#: the arithmetic of a run (runtime.resolve_precision says what "auto" becomes)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROTOCOLS = ("paper", "paper-b16", "corrected")
# the training batch size of each protocol when none is given
PROTOCOL_BATCH_SIZES = {"paper": 1, "paper-b16": 16, "corrected": 16}


@dataclass
class MVFAConfig:
    # --- backbone -------------------------------------------------------------------
    model_name: str = "ViT-L-14-336"        # any open_clip ViT, or "tiny-random" for tests
    pretrained: str = "openai"             # open_clip tag, a checkpoint file, or "random"
    image_size: int = 240                  # the paper runs the 336-px model at 240 px
    levels: tuple[int, ...] | None = None  # blocks (1-indexed) after which adapters sit;
    #                                        None = the four quarters (6, 12, 18, 24 of 24)
    protocol: str = "paper"
    # --- adapters ----------------------------------------------------------------------
    mix: tuple[float, float, float] = (0.8, 0.1, 0.1)  # stream, seg adapter, det adapter
    prompts: str = "paper"                 # a named prompt set (prompts.PROMPT_SETS)
    # --- scoring -----------------------------------------------------------------------
    temperature: float = 100.0             # patch-text logits = temperature * cos
    beta: float = 0.5                      # fusion: beta * zero-shot + (1 - beta) * few-shot
    # --- training ----------------------------------------------------------------------
    lr: float = 1e-3                       # few-shot protocol
    zero_shot_lr: float = 1e-4             # leave-one-dataset-out protocol (official code)
    betas: tuple[float, float] = (0.5, 0.999)
    epochs: int = 50
    batch_size: int | None = None          # None: the protocol's (paper 1, as the official
    #                                        code; paper-b16 and corrected 16, as quoted
    #                                        for the paper)
    shots: int = 4
    seed: int = 111
    augment: bool = True                   # the official x11 offline augmentation of shots
    normal_only: bool = False              # train on k normal shots only (issue #12)
    # --- execution ---------------------------------------------------------------------
    device: str = "auto"                   # "auto" = cuda when available, else cpu
    precision: str = "auto"                # auto, fp32, bf16, fp16 (runtime.resolve_precision)
    memory_chunk: int = 4096               # test patches per nearest-neighbour matmul chunk

    overrides: dict = field(default_factory=dict)  # explicit per-quirk overrides (see below)

    def __post_init__(self):
        self.mix = tuple(self.mix) if _is_sequence(self.mix) else self.mix
        self.betas = tuple(self.betas) if _is_sequence(self.betas) else self.betas
        if _is_sequence(self.levels):
            self.levels = tuple(self.levels)
        if self.batch_size is None and self.protocol in PROTOCOL_BATCH_SIZES:
            self.batch_size = PROTOCOL_BATCH_SIZES[self.protocol]
        self.validate()

    def validate(self) -> "MVFAConfig":
        """Check every setting before any work starts; the CLI and the API both end here.

        Raises ConfigError (a ValueError) naming the setting, its command-line option, the
        value and what is allowed. Returns the config, so ``config.validate()`` chains.
        """
        _check("protocol", self.protocol, self.protocol in PROTOCOLS, f"one of {PROTOCOLS}")
        whole = {"epochs": 1, "batch_size": 1, "shots": 1, "memory_chunk": 1}
        for name, low in whole.items():
            _check(name, getattr(self, name), _is_whole(getattr(self, name), low),
                   f"a whole number >= {low}")
        _check("seed", self.seed, _is_whole(self.seed, None), "a whole number")
        for name in ("lr", "zero_shot_lr", "temperature"):
            value = getattr(self, name)
            _check(name, value, _is_real(value) and value > 0, "a finite number > 0")
        _check("beta", self.beta, _is_real(self.beta) and 0 <= self.beta <= 1,
               "a number in [0, 1] (the zero-shot branch's share of the fused score)")
        _check("mix", self.mix, _is_sequence(self.mix) and len(self.mix) == 3
               and all(_is_real(v) and 0 <= v <= 1 for v in self.mix)
               and abs(sum(self.mix) - 1) <= 1e-6,
               "three numbers in [0, 1] that sum to 1 (stream, seg adapter, det adapter)")
        _check("betas", self.betas, _is_sequence(self.betas) and len(self.betas) == 2
               and all(_is_real(v) and 0 <= v < 1 for v in self.betas),
               "two Adam coefficients in [0, 1)")
        for name in ("augment", "normal_only"):
            value = getattr(self, name)
            _check(name, value, isinstance(value, bool), "True or False")
        _check("precision", self.precision, self.precision in PRECISIONS,
               f"one of {', '.join(PRECISIONS)}")
        for name in ("model_name", "pretrained", "prompts"):
            value = getattr(self, name)
            _check(name, value, isinstance(value, str) and value != "", "a non-empty name")
        _check("levels", self.levels, self.levels is None or (
            _is_sequence(self.levels) and len(self.levels) > 0
            and all(_is_whole(v, 1) for v in self.levels)), "block numbers >= 1")
        _check_image_size(self.model_name, self.image_size)
        _check_device(self.device)
        unknown = set(self.overrides) - set(_PROTOCOL_TABLE)
        _check("overrides", sorted(unknown), not unknown,
               f"protocol quirks, i.e. keys among {sorted(_PROTOCOL_TABLE)}")
        return self

    # --- protocol-derived behaviour (one line each; see the module docstring) ------------
    def _quirk(self, name: str):
        if name in self.overrides:
            return self.overrides[name]
        paper, corrected = _PROTOCOL_TABLE[name]
        return corrected if self.protocol == "corrected" else paper

    @property
    def normalize_pixels(self) -> bool:
        return self._quirk("normalize_pixels")

    @property
    def quick_gelu(self) -> bool | None:
        """False = plain GELU; None = whatever the pretrained weights were trained with."""
        return self._quirk("quick_gelu")

    @property
    def bce_on(self) -> str:
        return self._quirk("bce_on")

    @property
    def bank_includes_cls(self) -> bool:
        return self._quirk("bank_includes_cls")

    @property
    def image_score(self) -> str:
        return self._quirk("image_score")

    @property
    def selection(self) -> str:
        return self._quirk("selection")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MVFAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def replace(self, **changes) -> "MVFAConfig":
        """A copy with ``changes``. A new protocol brings its own batch size unless the batch
        size differs from the old protocol's or is given."""
        if ("protocol" in changes and "batch_size" not in changes
                and self.batch_size == PROTOCOL_BATCH_SIZES[self.protocol]):
            changes["batch_size"] = None
        return dataclasses.replace(self, **changes)


def _is_whole(value, low) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (low is None or value >= low))


def _is_real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple))


def _option(name: str) -> str:
    """The command-line option that sets a config field."""
    return {"model_name": "--model", "augment": "--no-augment"}.get(
        name, "--" + name.replace("_", "-"))


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name} = {value!r} ({_option(name)}) is not possible: it must be "
                          f"{allowed}.")


def _check_image_size(model_name: str, image_size) -> None:
    """The image must hold at least one patch of the ViT."""
    from .method.backbone import (
        patch_size,  # the backbone registry knows each ViT's patch
    )
    patch = patch_size(model_name) if isinstance(model_name, str) else None
    low = patch or 1
    _check("image_size", image_size, _is_whole(image_size, low),
           f"a whole number of pixels >= {low}" + (f", the patch size of {model_name}"
                                                   if patch else ""))


def _check_device(device) -> None:
    """'auto', or a device torch knows and this machine has."""
    import torch
    allowed = "auto, cpu, cuda or cuda:N (mps on Apple silicon)"
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    _check("device", device, parsed is not None and parsed.type in ("cpu", "cuda", "mps"),
           allowed)
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"device = {device!r} (--device): torch sees no CUDA GPU on this "
                              "machine; use --device cpu (or auto).")
        _check("device", device, (parsed.index or 0) < count, f"one of cuda:0 .. cuda:{count - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device = {device!r} (--device): torch sees no Apple GPU on this "
                          "machine; use --device cpu (or auto).")


#                       name: (paper, corrected)
_PROTOCOL_TABLE = {
    "normalize_pixels": (False, True),
    "quick_gelu": (False, None),
    "bce_on": ("logits", "probabilities"),
    "bank_includes_cls": (True, False),
    "image_score": ("paper", "det"),
    "selection": ("test", "validation"),
}

PRESETS = {
    # the official run: its quirks, batch 1, the test set picks the epoch
    "paper": dict(protocol="paper"),
    # the same with the batch size quoted for the paper (16)
    "paper-b16": dict(protocol="paper-b16"),
    "corrected": dict(protocol="corrected"),
    # the whole pipeline in seconds on a laptop CPU: tiny random ViT, few epochs.
    "fast-cpu": dict(model_name="tiny-random", pretrained="random", epochs=5, batch_size=16),
}


def preset(name: str, **changes) -> MVFAConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return MVFAConfig(**{**PRESETS[name], **changes})
