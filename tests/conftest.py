"""Shared fixtures: the embedded real datasets and a tiny random-weight MVFA."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # a missing download fails at once

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The embedded real datasets: $MVFA_SHARED_DATA, else <repo>/../shared/data."""
    return Path(os.environ.get("MVFA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "busi").is_dir():
        pytest.fail(f"the embedded datasets are not at {root}: set MVFA_SHARED_DATA to the "
                    "folder that holds busi/, chestxray_kermany224/ and brainmri_navoneel/.")
    return root


@pytest.fixture(scope="session")
def chest_root() -> Path:
    """The CC BY 4.0 chest X-ray subset shipped inside the repository."""
    return REPO / "data" / "chestxray_kermany224"


@pytest.fixture
def tiny_config():
    from mvfa_lite.config import preset
    return preset("fast-cpu", epochs=2, device="cpu")


@pytest.fixture
def tiny_model(tiny_config):
    from mvfa_lite.model import MVFA
    return MVFA.from_config(tiny_config)
