"""The shipped sets: where they are, their licences, and the synthetic lesions rebuilt
pixel for pixel from their seed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mvfa_lite.data import catalogue, synthlesions
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.errors import DataError


@pytest.mark.parametrize("name", catalogue.SHIPPED)
def test_each_shipped_set_is_here_and_names_its_licence(name):
    folder = catalogue.path(name)
    manifest = (folder / "MANIFEST.md").read_text()
    assert "CC BY 4.0" in manifest and "Kermany" in manifest
    test = ADDataset(folder, catalogue.splits(name)[1])
    assert test.num_normal > 0 and test.num_abnormal > 0


def test_synthetic_lesions_rebuild_pixel_for_pixel(tmp_path):
    shipped = catalogue.path("chestxray_synthlesion")
    rebuilt = synthlesions.build(catalogue.path("chestxray_kermany224"), tmp_path)
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*.png"))
    assert files == sorted(p.relative_to(rebuilt) for p in rebuilt.rglob("*.png"))
    assert len(files) == 64 + 32                   # images, and a mask per abnormal image
    for name in files:
        a, b = np.asarray(Image.open(shipped / name)), np.asarray(Image.open(rebuilt / name))
        assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b), name


def test_planted_masks_are_exactly_the_changed_region():
    rng = np.random.default_rng(0)
    image = np.full((224, 224), 100, dtype=np.uint8)
    changed, mask = synthlesions.plant_lesions(image, rng)
    assert set(np.unique(mask)) == {0, 255}
    assert not (changed != image)[mask == 0].any()           # nothing changes outside the mask
    assert (changed != image)[mask == 255].mean() > 0.99     # and the lesion is visible inside
    assert 0.002 < (mask > 0).mean() < 0.2                   # a lesion, not the whole image


def test_a_named_set_that_is_absent_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MVFA_SHARED_DATA", str(tmp_path))
    with pytest.raises(DataError, match="'busi' is not on this machine.*MVFA_SHARED_DATA"):
        catalogue.path("busi")
    with pytest.raises(DataError, match="does not exist.*BMAD"):
        catalogue.path(tmp_path / "Brain_AD")
    assert catalogue.path(tmp_path) == tmp_path
