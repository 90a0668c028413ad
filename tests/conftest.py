"""Shared fixtures: the shipped datasets, the extra real sets, and a tiny random-weight MVFA.

Tests that need the extra real sets (breast ultrasound, brain MRI: not shipped, their
licences do not allow it) use the ``shared_data`` fixture or the ``shared`` marker; they run
when ``$MVFA_SHARED_DATA`` (default ``../shared/data`` beside the clone) holds them and are
skipped, with the reason shown in pytest's summary, when it does not.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # a missing download fails at once

from mvfa_lite.data import catalogue  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# a stand-in of the official code's scripts for test_compare.py; its test_few.py is no test
collect_ignore = ["official_standin"]
SHARED_MISSING = (f"needs the extra real sets busi/ and brainmri_navoneel/ in "
                  f"{catalogue.extra_dir()} (not shipped: their licences do not allow it); "
                  "set MVFA_SHARED_DATA to run these cases")


def shared_available() -> bool:
    return all((catalogue.extra_dir() / name).is_dir() for name in catalogue.EXTRA)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
        if item.get_closest_marker("shared") and not shared_available():
            item.add_marker(pytest.mark.skip(reason=SHARED_MISSING))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of the extra real sets (tests using it are skipped when it is absent)."""
    return catalogue.extra_dir()


@pytest.fixture(scope="session")
def chest_root() -> Path:
    """The CC BY 4.0 chest X-rays (image labels only), shipped with mvfa-lite."""
    return catalogue.path("chestxray_kermany224")


@pytest.fixture(scope="session")
def synth_root() -> Path:
    """The shipped chest X-rays with synthetic lesions and exact masks (splits valid, test)."""
    return catalogue.path("chestxray_synthlesion")


@pytest.fixture
def tiny_config():
    from mvfa_lite.config import preset
    return preset("fast-cpu", epochs=2, device="cpu")


@pytest.fixture
def tiny_model(tiny_config):
    from mvfa_lite.method.model import MVFA
    return MVFA.from_config(tiny_config)
