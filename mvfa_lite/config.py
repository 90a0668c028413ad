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
bce_on                 "logits"                       "probabilities": the class score already is a
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

The config is plain values: :meth:`MVFAConfig.validate` checks every field and every quirk
value without importing torch or open_clip, so a config can be built and read anywhere.
What depends on the machine or the model registry (the device is present, the image holds
one patch, the prompt set exists) is checked by ``protocols.experiment.preflight`` before
any work. :data:`OPTIONS` gives every field its command-line option; the CLI builds its
options from it, so the two cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass, field

from .errors import ConfigError

#: the arithmetic of a run (runtime.resolve_precision says what "auto" becomes)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: whether the ViT blocks run through torch.compile (runtime.resolve_compile says what "auto" does)
COMPILE_MODES = ("off", "on", "auto")
PROTOCOLS = ("paper", "paper-b16", "corrected")
# the training batch size of each protocol when none is given
PROTOCOL_BATCH_SIZES = {"paper": 1, "paper-b16": 16, "corrected": 16}
#: how the final image score is made (method.branches.image_scores)
IMAGE_SCORE_RULES = ("paper", "det", "seg_max")
DEVICE_NAMES = "auto, cpu, cuda or cuda:N (mps on Apple silicon)"


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
    compile: str = "off"                   # off, on, auto (runtime.resolve_compile)
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
        """Check the value of every setting and quirk (runs on construction).

        Raises ConfigError (a ValueError) naming the setting, its command-line option, the
        value and what is allowed. Returns the config, so ``config.validate()`` chains.
        """
        _check("protocol", self.protocol, self.protocol in PROTOCOLS, f"one of {PROTOCOLS}")
        whole = {"epochs": 1, "batch_size": 1, "shots": 1, "memory_chunk": 1}
        for name, low in whole.items():
            _check(name, getattr(self, name), _is_whole(getattr(self, name), low),
                   f"a whole number >= {low}")
        _check("seed", self.seed, _is_whole(self.seed, 0) and self.seed <= MAX_SEED,
               f"a whole number from 0 to 2**63 - 1 = {MAX_SEED} (what torch can seed)")
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
        _check("compile", self.compile, self.compile in COMPILE_MODES,
               f"one of {', '.join(COMPILE_MODES)}")
        for name in ("model_name", "pretrained", "prompts"):
            value = getattr(self, name)
            _check(name, value, isinstance(value, str) and value != "", "a non-empty name")
        _check("levels", self.levels, self.levels is None or (
            _is_sequence(self.levels) and len(self.levels) > 0
            and all(_is_whole(v, 1) for v in self.levels)), "block numbers >= 1")
        _check("image_size", self.image_size, _is_whole(self.image_size, None),
               "a whole number of pixels, at least the backbone's patch size")
        _check("device", self.device, isinstance(self.device, str)
               and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
               DEVICE_NAMES)
        _check("overrides", self.overrides, isinstance(self.overrides, dict),
               "a dict of protocol quirks")
        unknown = sorted(set(self.overrides) - set(QUIRKS))
        _check("overrides", unknown, not unknown,
               f"protocol quirks, i.e. keys among {sorted(QUIRKS)}")
        for name, value in self.overrides.items():
            allowed = QUIRKS[name][2]
            _check(name, value, any(type(value) is type(v) and value == v for v in allowed),
                   f"one of {allowed} (a protocol quirk; see mvfa_lite/config.py)")
        return self

    # --- protocol-derived behaviour (one line each; see the module docstring) ------------
    def _quirk(self, name: str):
        if name in self.overrides:
            return self.overrides[name]
        paper, corrected, _ = QUIRKS[name]
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


#: the largest seed: torch.manual_seed takes a signed 64-bit number
MAX_SEED = 2**63 - 1


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        option = OPTIONS[name][1] if name in OPTIONS else f"--override {name}=..."
        raise ConfigError(f"{name} = {value!r} ({option}) is not possible: it must be "
                          f"{allowed}.")


#: the protocol quirks (module docstring): name -> (paper, corrected, the values allowed)
QUIRKS = {
    "normalize_pixels": (False, True, (False, True)),
    "quick_gelu": (False, None, (False, True, None)),   # None: the weights' own activation
    "bce_on": ("logits", "probabilities", ("logits", "probabilities")),
    "bank_includes_cls": (True, False, (False, True)),
    "image_score": ("paper", "det", IMAGE_SCORE_RULES),
    "selection": ("test", "validation", ("test", "validation")),
}

#: the command-line option of every field: name -> (group, flag, kind, help). ``kind`` is
#: how the CLI parses it: a type, ("nargs", type, n), "true"/"false" (a switch that sets
#: it), "choice" (the CLI lists the names) or "override" (NAME=VALUE, repeatable).
OPTIONS = {
    "protocol": ("model", "--protocol", "choice", "paper = the official run (batch 1); "
                 "paper-b16 = the same at the batch 16 quoted for the paper; corrected = the "
                 "official code's bugs fixed"),
    "model_name": ("model", "--model", str,
                   "open_clip ViT name (default ViT-L-14-336; tiny-random for smoke tests)"),
    "pretrained": ("model", "--pretrained", str,
                   "open_clip pretrained tag (default openai) or 'random'"),
    "image_size": ("model", "--image-size", int, "default 240"),
    "levels": ("model", "--levels", ("nargs", int, "+"),
               "blocks after which adapters sit (default: the four quarters)"),
    "mix": ("model", "--mix", ("nargs", float, 3),
            "residual mix: stream, seg adapter, det adapter (0.8 0.1 0.1)"),
    "device": ("model", "--device", str, "auto (default), cpu, cuda, cuda:1, ..."),
    "precision": ("model", "--precision", "choice", "auto (default): bf16 on GPUs that have "
                  "it, fp16 on T4/V100, on a CPU the faster of bf16 and fp32 as measured"),
    "compile": ("model", "--compile", "choice", "torch.compile the ViT blocks: off (default), "
                "on, or auto = on where measured faster on this machine (measured once, kept "
                "in $MVFA_CACHE; the first compile takes minutes)"),
    "prompts": ("scoring", "--prompts", "choice", "prompt set (default: paper)"),
    "temperature": ("scoring", "--temperature", float, "patch-text logit scale (100)"),
    "beta": ("scoring", "--beta", float, "fusion weight of the zero-shot branch (0.5)"),
    "memory_chunk": ("scoring", "--memory-chunk", int,
                     "test patches per nearest-neighbour product (4096; lower saves memory)"),
    "epochs": ("training", "--epochs", int, "default 50"),
    "batch_size": ("training", "--batch-size", int,
                   "default: the protocol's (paper 1, paper-b16 and corrected 16)"),
    "shots": ("training", "--shots", int, "few-shot: k normal (+ k abnormal) images; default 4"),
    "seed": ("training", "--seed", int, "default 111"),
    "lr": ("training", "--lr", float, "few-shot learning rate (1e-3)"),
    "zero_shot_lr": ("training", "--zero-shot-lr", float, "zero-shot learning rate (1e-4)"),
    "betas": ("training", "--betas", ("nargs", float, 2), "Adam's betas (0.5 0.999)"),
    "augment": ("training", "--no-augment", "false",
                "few-shot: skip the official x11 augmentation of the shots"),
    "normal_only": ("training", "--normal-only", "true",
                    "few-shot: train on the k normal shots only"),
    "overrides": ("model", "--override", "override", "one protocol quirk, NAME=VALUE "
                  f"(repeatable; names: {', '.join(QUIRKS)})"),
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
