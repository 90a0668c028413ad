"""The paper's published numbers (AUROC, %), for side-by-side tables.

Sources: the official README's "Paper" column (zero-shot and 4-shot per dataset) and a
third-party transcription of the per-shot table (k = 2, 4, 8, 16; its k = 4 values match the
README exactly). AC = image-level AUROC, AS = pixel-level AUROC.
"""
from __future__ import annotations

# the six BMAD sets (data.catalogue.BMAD_KEYS) in the order of the paper's tables
DATASETS = ("Histopathology", "Chest", "Retina_OCT2017", "Brain", "Liver", "Retina_RESC")
PAPER_NAMES = {"Histopathology": "HIS", "Chest": "ChestXray", "Retina_OCT2017": "OCT17",
               "Brain": "BrainMRI", "Liver": "LiverCT", "Retina_RESC": "RESC"}

ZERO_SHOT = {  # dataset: (AC, AS or None)
    "Histopathology": (77.90, None), "Chest": (71.11, None), "Retina_OCT2017": (95.40, None),
    "Brain": (78.63, 90.27), "Liver": (76.24, 97.85), "Retina_RESC": (83.31, 92.05),
}

# per shot k: dataset -> (AC, AS or None)
FEW_SHOT = {
    2: {"Histopathology": (82.61, None), "Chest": (81.32, None), "Retina_OCT2017": (97.98, None),
        "Brain": (92.72, 96.55), "Liver": (81.08, 96.57), "Retina_RESC": (91.36, 98.11)},
    4: {"Histopathology": (82.71, None), "Chest": (81.95, None), "Retina_OCT2017": (99.38, None),
        "Brain": (92.44, 97.30), "Liver": (81.18, 99.73), "Retina_RESC": (96.18, 98.97)},
    8: {"Histopathology": (85.10, None), "Chest": (83.89, None), "Retina_OCT2017": (99.64, None),
        "Brain": (92.61, 97.21), "Liver": (85.90, 99.79), "Retina_RESC": (96.57, 99.00)},
    16: {"Histopathology": (82.62, None), "Chest": (85.72, None), "Retina_OCT2017": (99.66, None),
         "Brain": (94.40, 97.70), "Liver": (83.85, 99.73), "Retina_RESC": (97.25, 99.07)},
}


def averages(table: dict) -> tuple[float, float]:
    """(mean AC over the six datasets, mean AS over the three with masks)."""
    ac = [v[0] for v in table.values()]
    as_ = [v[1] for v in table.values() if v[1] is not None]
    return sum(ac) / len(ac), sum(as_) / len(as_)
