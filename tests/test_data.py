"""Tests of mvfa_lite.data.layout, .images and .shots: loading, bad inputs, few-shot selection and
augmentation."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvfa_lite.data import catalogue
from mvfa_lite.data.catalogue import BMAD_KEYS, bmad_path
from mvfa_lite.data.folder import ImageFolder
from mvfa_lite.data.images import image_to_tensor, load_image, load_mask, mask_to_tensor
from mvfa_lite.data.layout import ADDataset, Item
from mvfa_lite.data.shots import (
    AUGMENTATIONS_PER_SHOT,
    augment_shots,
    read_seed_file,
    select_shots,
    split_off_shots,
)
from mvfa_lite.errors import DataError

S = 32  # small image size keeps the tests fast


# -- helpers ---------------------------------------------------------------------------------


def write_png(path: Path, size=(20, 16), value: int = 128, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def make_dataset(
    root: Path,
    split: str = "test",
    normal: int = 3,
    abnormal: int = 3,
    masks: bool = True,
) -> Path:
    """A tiny synthetic dataset in the MVFA layout; returns ``root``."""
    base = root / split
    (base / "good" / "img").mkdir(parents=True, exist_ok=True)
    (base / "Ungood" / "img").mkdir(parents=True, exist_ok=True)
    for i in range(normal):
        write_png(base / "good" / "img" / f"n{i:02d}.png", value=100 + i)
    for i in range(abnormal):
        write_png(base / "Ungood" / "img" / f"a{i:02d}.png", value=50 + i)
        if masks:
            mask = np.zeros((16, 20), dtype=np.uint8)
            mask[4:10, 5:12] = 255
            path = base / "Ungood" / "anomaly_mask" / f"a{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(path)
    return root


@contextmanager
def raises_data_error(*fragments):
    """Expect a DataError whose message contains every fragment (paths, names, counts)."""
    with pytest.raises(DataError) as info:
        yield info
    for fragment in fragments:
        assert str(fragment) in str(info.value), str(info.value)


# -- embedded real datasets ------------------------------------------------------------------


@pytest.mark.parametrize("folder, has_masks", [
    ("chestxray_kermany224", False),
    pytest.param("busi", True, marks=pytest.mark.shared),
    pytest.param("brainmri_navoneel", False, marks=pytest.mark.shared)])
def test_embedded_sets_load(folder, has_masks):
    ds = ADDataset(catalogue.path(folder), "embedded", image_size=S)
    assert ds.name == folder
    assert len(ds) == 40 and ds.num_normal == 20 and ds.num_abnormal == 20
    assert ds.has_masks == has_masks
    assert torch.equal(ds.labels, torch.tensor([0] * 20 + [1] * 20))
    names = [item.image_path.name for item in ds.items]
    assert names[:20] == sorted(names[:20]) and names[20:] == sorted(names[20:])

    data = ds.load_all(progress=False)
    assert data["image"].shape == (40, 3, S, S) and data["image"].dtype == torch.float32
    assert data["mask"].shape == (40, S, S)
    assert data["image"].min() >= 0 and data["image"].max() <= 1
    assert set(data["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(data["label"], ds.labels)
    assert data["path"] == [str(item.image_path) for item in ds.items]
    assert data["mask"][:20].sum() == 0  # normal images have empty masks
    if has_masks:
        assert all(item.mask_path is not None for item in ds.items[20:])
        assert (data["mask"][20:].flatten(1).sum(1) > 0).all()  # every lesion mask is non-empty
    else:
        assert data["mask"].sum() == 0


def test_getitem_dict_and_subset(synth_root):
    ds = ADDataset(synth_root, "test", image_size=S)
    size = len(ds)
    sample = ds[25]
    assert set(sample) == {"image", "mask", "label", "path"}
    assert sample["label"] == 1 and sample["path"].endswith(".png") and sample["mask"].sum() > 0
    part = ds.subset([0, 25])
    assert len(part) == 2 and part.image_size == S and part.name == "chestxray_synthlesion"
    assert part.items == [ds.items[0], ds.items[25]]
    assert isinstance(part.items[0], Item)
    assert len(ds) == size == 48  # the original is untouched


def test_name_strips_ad_suffix(tmp_path):
    root = make_dataset(tmp_path / "Brain_AD")
    assert ADDataset(root, "test").name == "Brain"
    assert ADDataset(root, "test", name="custom").name == "custom"


def test_single_class_split_is_allowed(tmp_path):
    ds = ADDataset(make_dataset(tmp_path / "d", abnormal=0, masks=False), "test")
    assert ds.num_normal == 3 and ds.num_abnormal == 0


def test_ignores_hidden_and_non_image_files(tmp_path):
    root = make_dataset(tmp_path / "d", masks=False)
    img_dir = root / "test" / "good" / "img"
    (img_dir / "notes.txt").write_text("x")
    write_png(img_dir / ".hidden.png")
    write_png(img_dir / "UPPER.PNG")
    ds = ADDataset(root, "test")
    assert ds.num_normal == 4


def test_mask_paired_by_stem_when_extension_differs(tmp_path):
    root = make_dataset(tmp_path / "d", abnormal=1, masks=False)
    mask_dir = root / "test" / "Ungood" / "anomaly_mask"
    write_png(mask_dir / "a00.bmp", value=255)
    ds = ADDataset(root, "test", image_size=S)
    assert ds.items[-1].mask_path == mask_dir / "a00.bmp"
    assert ds[len(ds) - 1]["mask"].sum() == S * S


def test_bmad_mask_folder_name_ungood_label(tmp_path):
    """BMAD (and anomalib's loader) name the mask folder Ungood/label; both names work."""
    root = make_dataset(tmp_path / "d", abnormal=2)
    ungood = root / "test" / "Ungood"
    (ungood / "anomaly_mask").rename(ungood / "label")
    ds = ADDataset(root, "test", image_size=S)
    assert ds.has_masks and all(item.mask_path.parent == ungood / "label"
                                for item in ds.items if item.label == 1)
    (ungood / "anomaly_mask").mkdir()
    with raises_data_error("two mask folders", "anomaly_mask/", "label/"):
        ADDataset(root, "test", image_size=S)


# -- image modes -----------------------------------------------------------------------------


def _gradient(h=24, w=30) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))


@pytest.mark.parametrize(
    "mode, ext",
    [
        ("L", "png"),
        ("LA", "png"),
        ("RGB", "jpg"),
        ("RGBA", "png"),
        ("P", "png"),
        ("CMYK", "jpg"),
        ("1", "png"),
        ("I;16", "png"),
        ("I;16B", "tif"),
        ("I", "tif"),
        ("F", "tif"),
    ],
)
def test_every_mode_gives_rgb(tmp_path, mode, ext):
    grey = Image.fromarray(_gradient())
    if mode == "I;16B":
        values = (_gradient().astype(np.float64) * 10).astype(">u2")
        img = Image.frombytes("I;16B", grey.size, values.tobytes())
    else:
        img = grey.convert(mode)
    path = tmp_path / f"x.{ext}"
    img.save(path)
    assert Image.open(path).mode == mode  # the file really has that mode

    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == grey.size
    tensor = image_to_tensor(rgb, S)
    assert tensor.shape == (3, S, S) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1


def test_16bit_is_rescaled_not_clipped(tmp_path):
    values = np.linspace(0, 4000, 40 * 50).reshape(40, 50).astype(np.uint16)
    path = tmp_path / "scan16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = np.asarray(load_image(path))
    assert pixels.max() == 255 and pixels.min() == 0
    assert (pixels == 255).mean() < 0.01  # PIL's clipping would make ~94 % of it white


def test_constant_16bit_maps_to_zeros(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((8, 8), 1234, dtype=np.uint16)).save(path)
    assert np.asarray(load_image(path)).max() == 0


def test_alpha_composited_onto_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, ...
    rgba[:2, :, 3] = 255  # ... opaque in the top half, transparent below
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = np.asarray(load_image(path))
    assert (pixels[:2, :, 0] == 200).all() and (pixels[2:] == 0).all()


def test_large_non_square_image(tmp_path):
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (1900, 700), (10, 200, 30)).save(path)
    tensor = image_to_tensor(load_image(path), S)
    assert tensor.shape == (3, S, S)
    assert torch.allclose(tensor[:, S // 2, S // 2], torch.tensor([10, 200, 30]) / 255, atol=0.02)


def test_mask_binarised_at_half_the_8bit_range():
    values = np.array([[0, 127], [128, 255]], dtype=np.uint8)
    tensor = mask_to_tensor(Image.fromarray(values), 2)
    assert torch.equal(tensor, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


@pytest.mark.parametrize("values, foreground", [
    (np.array([[1, 1], [255, 1]], dtype=np.uint8), [[0, 0], [255, 0]]),   # background 1
    (np.array([[0, 3], [200, 0]], dtype=np.uint8), [[0, 0], [255, 0]]),   # faint noise
    (np.array([[0, 255], [32768, 65535]], dtype=np.uint16), [[0, 0], [255, 255]]),
    (np.array([[0.0, 0.4], [0.6, 1.0]], dtype=np.float32), [[0, 0], [255, 255]]),
])
def test_load_mask_thresholds_at_half_the_value_range(tmp_path, values, foreground):
    path = tmp_path / ("m.tif" if values.dtype == np.float32 else "m.png")
    Image.fromarray(values).save(path)
    mask = load_mask(path, (2, 2))
    assert mask.mode == "L" and np.asarray(mask).tolist() == foreground


def test_image_folder(tmp_path):
    write_png(tmp_path / "b.png")
    write_png(tmp_path / "sub" / "a.jpg", mode="RGB", value=(1, 2, 3))
    write_png(tmp_path / ".git" / "c.png")
    (tmp_path / "readme.txt").write_text("x")
    folder = ImageFolder(tmp_path, image_size=S)
    assert [p.name for p in folder.paths] == ["b.png", "a.jpg"]
    sample = folder[1]
    assert sample["image"].shape == (3, S, S) and sample["path"].endswith("a.jpg")


def test_image_folder_errors(tmp_path):
    with raises_data_error(tmp_path / "nope"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with raises_data_error(tmp_path / "empty"):
        ImageFolder(tmp_path / "empty")


# -- bad inputs ------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with raises_data_error(tmp_path / "missing"):
        ADDataset(tmp_path / "missing", "test")


def test_missing_split_lists_existing(tmp_path):
    root = make_dataset(tmp_path / "d", split="valid")
    make_dataset(root, split="test")
    with raises_data_error(root / "train", "test, valid"):
        ADDataset(root, "train")


def test_missing_ungood_img(tmp_path):
    root = tmp_path / "d"
    (root / "test" / "good" / "img").mkdir(parents=True)
    with raises_data_error(root / "test" / "Ungood" / "img", "anomaly_mask"):
        ADDataset(root, "test")


def test_empty_split(tmp_path):
    root = make_dataset(tmp_path / "d", normal=0, abnormal=0, masks=False)
    with raises_data_error(root / "test"):
        ADDataset(root, "test")


def test_corrupt_image(tmp_path):
    root = make_dataset(tmp_path / "d", masks=False)
    bad = root / "test" / "good" / "img" / "x.png"
    bad.write_bytes(b"this is not an image at all")
    ds = ADDataset(root, "test")
    index = [item.image_path for item in ds.items].index(bad)
    with raises_data_error(bad, "Replace or delete"):
        ds[index]


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with raises_data_error(path):
        load_image(path)


def test_mask_wrong_size(tmp_path):
    root = make_dataset(tmp_path / "d", abnormal=1)
    mask = root / "test" / "Ungood" / "anomaly_mask" / "a00.png"
    write_png(mask, size=(10, 10), value=255)
    ds = ADDataset(root, "test")
    with raises_data_error(mask, "a00.png") as info:
        ds[len(ds) - 1]
    assert "10x10" in str(info.value) and "20x16" in str(info.value)
    assert str(ds.items[-1].image_path) in str(info.value)


def test_abnormal_image_without_mask(tmp_path):
    root = make_dataset(tmp_path / "d")
    extra = write_png(root / "test" / "Ungood" / "img" / "lonely.png")
    with raises_data_error(extra):
        ADDataset(root, "test")


def test_mask_without_image(tmp_path):
    root = make_dataset(tmp_path / "d")
    orphan = write_png(root / "test" / "Ungood" / "anomaly_mask" / "ghost.png")
    with raises_data_error(orphan):
        ADDataset(root, "test")


def test_unknown_bmad_key(tmp_path):
    with raises_data_error("Lung", ", ".join(BMAD_KEYS)):
        bmad_path(tmp_path, "Lung")


def test_bmad_path(tmp_path):
    with raises_data_error(tmp_path / "Brain_AD", "Google Drive"):
        bmad_path(tmp_path, "Brain")
    (tmp_path / "Liver").mkdir()
    assert bmad_path(tmp_path, "Liver") == tmp_path / "Liver"
    (tmp_path / "Brain_AD").mkdir()
    assert bmad_path(tmp_path, "Brain") == tmp_path / "Brain_AD"


# -- few-shot selection ----------------------------------------------------------------------

SEED_TEXT = """\
a-0: a01.png a03.png
n-0: n02.png n00.png
a-1: a00.png a02.png

n-1: n01.png n03.png
"""


@pytest.fixture
def six_by_six(tmp_path) -> ADDataset:
    return ADDataset(make_dataset(tmp_path / "d", normal=6, abnormal=6), "test")


def test_read_seed_file(tmp_path):
    path = tmp_path / "2-shot.txt"
    path.write_text(SEED_TEXT)
    assert read_seed_file(path) == (["n02.png", "n00.png"], ["a01.png", "a03.png"])
    assert read_seed_file(path, iterate=1) == (["n01.png", "n03.png"], ["a00.png", "a02.png"])


def test_seed_file_missing_iterate(tmp_path):
    path = tmp_path / "2-shot.txt"
    path.write_text(SEED_TEXT)
    with raises_data_error(path, "0, 1"):
        read_seed_file(path, iterate=4)


def test_select_shots_from_seed_file(tmp_path, six_by_six):
    path = tmp_path / "2-shot.txt"
    path.write_text(SEED_TEXT)
    shots = select_shots(six_by_six, 2, seed_file=path)
    names = [six_by_six.items[i].image_path.name for i in shots]
    assert names == ["n00.png", "n02.png", "a01.png", "a03.png"]
    only_normal = select_shots(six_by_six, 2, seed_file=path, iterate=1, normal_only=True)
    assert [six_by_six.items[i].image_path.name for i in only_normal] == ["n01.png", "n03.png"]


def test_seed_file_names_not_in_dataset(tmp_path, six_by_six):
    path = tmp_path / "1-shot.txt"
    path.write_text("a-0: zzz.png\nn-0: n00.png\n")
    with raises_data_error("zzz.png", str(six_by_six.root / "test" / "Ungood" / "img")):
        select_shots(six_by_six, 1, seed_file=path)


def test_select_shots_random(six_by_six):
    shots = select_shots(six_by_six, 3, seed=1)
    assert shots == select_shots(six_by_six, 3, seed=1)  # deterministic
    assert len(shots) == 6 and len(set(shots)) == 6
    assert [six_by_six.items[i].label for i in shots] == [0, 0, 0, 1, 1, 1]
    draws = {tuple(select_shots(six_by_six, 3, seed=s)) for s in range(5)}
    assert len(draws) > 1  # different seeds give different shots

    normal = select_shots(six_by_six, 4, seed=1, normal_only=True)
    assert len(normal) == 4 and all(six_by_six.items[i].label == 0 for i in normal)


def test_k_too_large_or_zero(six_by_six):
    with raises_data_error("k=7", "6 normal and 6 abnormal"):
        select_shots(six_by_six, 7, seed=0)
    with raises_data_error("k=0"):
        select_shots(six_by_six, 0, seed=0)


def test_split_off_shots(chest_root):
    ds = ADDataset(chest_root, "embedded", image_size=S)
    support, rest = split_off_shots(ds, 4, seed=0)
    assert support.num_normal == 4 and support.num_abnormal == 4
    assert len(rest) == 32
    assert not {i.image_path for i in support.items} & {i.image_path for i in rest.items}
    support, rest = split_off_shots(ds, 4, seed=0, normal_only=True)
    assert len(support) == 4 and rest.num_normal == 16 and rest.num_abnormal == 20


def test_split_off_shots_leaving_one_class(six_by_six):
    with raises_data_error(six_by_six.root / "test", "0 normal"):
        split_off_shots(six_by_six, 6, seed=0)


# -- augmentation ----------------------------------------------------------------------------


def test_augment_shots():
    n = 3
    torch.manual_seed(0)
    images = torch.rand(n, 3, 20, 20)
    masks = torch.zeros(n, 20, 20)
    masks[:, 3:9, 4:15] = 1
    aug_images, aug_masks = augment_shots(images, masks)
    assert AUGMENTATIONS_PER_SHOT == 11
    assert aug_images.shape == (11 * n, 3, 20, 20) and aug_masks.shape == (11 * n, 20, 20)
    assert torch.equal(aug_images[:n], images)
    assert torch.equal(aug_masks[:n], masks)
    assert torch.allclose(aug_images[9 * n : 10 * n], images.flip(-1), atol=1e-5)
    assert torch.allclose(aug_images[10 * n :], images.flip(-2), atol=1e-5)
    assert torch.equal(aug_masks[9 * n : 10 * n], masks.flip(-1))
    assert set(aug_masks.unique().tolist()) <= {0.0, 1.0}
    assert (aug_masks.flatten(1).sum(1) > 0).all()  # the lesion survives every transform
    for t in range(1, 9):  # rotations and translations really move the image
        assert not torch.allclose(aug_images[t * n : (t + 1) * n], images)


def test_rotation_of_constant_image_stays_constant():
    images = torch.full((2, 3, 16, 16), 0.7)
    aug_images, _ = augment_shots(images, torch.zeros(2, 16, 16))
    assert torch.allclose(aug_images, torch.full_like(aug_images, 0.7), atol=1e-6)
