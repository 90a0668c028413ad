"""The two-level prompt ensemble: state words x templates, one text vector per state.

For an object word such as "Brain", every normal state word (7) and every abnormal one (5)
is put into each of the 35 templates: 245 normal and 175 abnormal sentences. Each sentence
is encoded and L2-normalised, each state's sentences are averaged, and the average is
normalised again. The two vectors are the columns of T (D, 2): column 0 normal, 1 abnormal.
"""
from __future__ import annotations

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw",
                 "{} without defect", "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect",
                   "{} with damage")

TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.",
    "a photo of my {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a photo of one {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "a low resolution photo of a {}.", "a photo of a large {}.", "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a photo of the small {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "a dark photo of a {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "there is a {} in the scene.",
    "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)

# A medical vocabulary, for the prompt ablation (not part of the paper).
MEDICAL_NORMAL_STATES = ("{}", "healthy {}", "normal {}", "{} without lesion",
                         "{} without abnormality")
MEDICAL_ABNORMAL_STATES = ("{} with a lesion", "{} with a tumor", "abnormal {}",
                           "{} with an abnormality", "diseased {}")

# Named prompt sets for the ablations: (normal states, abnormal states, templates).
PROMPT_SETS = {
    "paper": (NORMAL_STATES, ABNORMAL_STATES, TEMPLATES),            # 245 + 175 sentences
    "medical": (MEDICAL_NORMAL_STATES, MEDICAL_ABNORMAL_STATES, TEMPLATES),
    "states-only": (NORMAL_STATES, ABNORMAL_STATES, ("{}",)),        # no template ensemble
    "single": (("normal {}",), ("abnormal {}",), ("a photo of the {}.",)),  # one sentence each
}

# The object word per dataset: the six BMAD sets (as in the official code) and the
# embedded sets shipped for tests and demos.
OBJECT_NAMES = {
    "Brain": "Brain",
    "Liver": "Liver",
    "Retina_RESC": "retinal OCT",
    "Retina_OCT2017": "retinal OCT",
    "Chest": "Chest X-ray film",
    "Histopathology": "histopathological image",
    "busi": "breast ultrasound",
    "chestxray_kermany224": "Chest X-ray film",
    "chestxray_synthlesion": "Chest X-ray film",
    "brainmri_navoneel": "Brain",
}


def object_name(dataset_name: str) -> str:
    """The object word for a dataset; an unknown name is used as it is (with _ as spaces)."""
    return OBJECT_NAMES.get(dataset_name, dataset_name.replace("_", " "))


def state_sentences(obj: str, states=NORMAL_STATES, templates=TEMPLATES) -> list[str]:
    """Every state word x template sentence for one state: len(states) * len(templates)."""
    return [template.format(state.format(obj)) for state in states for template in templates]
