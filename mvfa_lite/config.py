"""Every knob of MVFA in one dataclass, and the protocols.

The defaults reproduce the official run (``protocol="paper"``): the official code's quirks,
its batch size of 1 and its model-selection schedule. ``protocol="paper-b16"`` is the same with
the batch size the paper's text states (16). ``protocol="corrected"`` switches the official
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
batch_size             1 (paper-b16: 16)        16: the paper's text; batches use the hardware.
=====================  =======================  ==============================================

``batch_size`` is a plain field: ``None`` (the default) means the protocol's value above.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
    #                                        code; paper-b16 and corrected 16, the paper's text)
    shots: int = 4
    seed: int = 111
    augment: bool = True                   # the official x11 offline augmentation of shots
    normal_only: bool = False              # train on k normal shots only (issue #12)
    # --- execution ---------------------------------------------------------------------
    device: str = "auto"                   # "auto" = cuda when available, else cpu
    amp: bool = True                       # bf16 autocast on CUDA (ignored on CPU)
    memory_chunk: int = 4096               # test patches per nearest-neighbour matmul chunk

    overrides: dict = field(default_factory=dict)  # explicit per-quirk overrides (see below)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if abs(sum(self.mix) - 1.0) > 1e-6:
            raise ValueError(f"mix weights must sum to 1 (stream, seg, det); got {self.mix}")
        if self.batch_size is None:
            self.batch_size = PROTOCOL_BATCH_SIZES[self.protocol]
        self.mix = tuple(self.mix)
        self.betas = tuple(self.betas)
        if self.levels is not None:
            self.levels = tuple(int(level) for level in self.levels)
        unknown = set(self.overrides) - set(_PROTOCOL_TABLE)
        if unknown:
            raise ValueError(f"unknown protocol overrides {sorted(unknown)}; "
                             f"choose from {sorted(_PROTOCOL_TABLE)}")

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
    # the same with the batch size the paper's text states
    "paper-b16": dict(protocol="paper-b16"),
    "corrected": dict(protocol="corrected"),
    # the whole pipeline in seconds on a laptop CPU: tiny random ViT, few epochs.
    "fast-cpu": dict(model_name="tiny-random", pretrained="random", epochs=5, batch_size=16),
}


def preset(name: str, **changes) -> MVFAConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return MVFAConfig(**{**PRESETS[name], **changes})
