"""The catalogue of bad input: each case stops before any training with one line that names
the setting or file and the fix (or, for usable but doubtful data, warns naming the files).

Add a case here for every new check; the catalogue grows, never shrinks."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import make_dataset, write_png

from mvfa_lite.config import MVFAConfig, preset
from mvfa_lite.data.folder import ImageFolder
from mvfa_lite.data.images import load_image
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.errors import ConfigError, DataError, DataWarning
from mvfa_lite.protocols import experiment
from mvfa_lite.tools.cli import main

PATCH = 14   # the tiny test ViT's patch size


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a run gets as far as building the model."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the model was built: the bad input was not caught before training")
    monkeypatch.setattr(experiment, "build_model", forbidden)


def run_cli(capsys, *argv) -> str:
    """Run the CLI, expect exit status 2 and one error line; return that line."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"mvfa-lite {argv[0]}: error: "), err
    return err


def train_argv(root: Path, out: Path, *options) -> list:
    return ["train", root, "--support-split", "test", "--test-split", "test", "--preset",
            "fast-cpu", "--shots", "1", "--device", "cpu", "--out", out, *options]


# --- settings: one place (MVFAConfig.validate) for the CLI and the API ------------------

SETTINGS = [
    (["--epochs", "0"], "epochs = 0 (--epochs)", "whole number >= 1"),
    (["--batch-size", "0"], "batch_size = 0 (--batch-size)", "whole number >= 1"),
    (["--shots", "0"], "shots = 0 (--shots)", "whole number >= 1"),
    (["--lr", "0"], "lr = 0.0 (--lr)", "finite number > 0"),
    (["--lr", "nan"], "lr = nan (--lr)", "finite number > 0"),
    (["--zero-shot-lr=-1e-4"], "zero_shot_lr = -0.0001 (--zero-shot-lr)", "> 0"),
    (["--beta", "5"], "beta = 5.0 (--beta)", "in [0, 1]"),
    (["--beta", "nan"], "beta = nan (--beta)", "in [0, 1]"),
    (["--mix", "nan", "0.5", "0.5"], "mix = (nan, 0.5, 0.5) (--mix)", "sum to 1"),
    (["--mix", "0.5", "0.1", "0.1"], "mix = (0.5, 0.1, 0.1) (--mix)", "sum to 1"),
    (["--mix", "1.5", "-0.25", "-0.25"], "mix = (1.5, -0.25, -0.25)", "in [0, 1]"),
    (["--image-size", "7"], "image_size = 7 (--image-size)", "patch size of tiny-random"),
    (["--image-size", "0"], "image_size = 0 (--image-size)", ">= 14"),
    (["--levels", "0", "2"], "levels = (0, 2) (--levels)", "block numbers >= 1"),
    (["--device", "gpu"], "device = 'gpu' (--device)", "auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "device = 'cuda:99' (--device)",
     "no CUDA GPU" if not torch.cuda.is_available() else "one of cuda:0"),
]


@pytest.mark.parametrize("options, setting, allowed", SETTINGS,
                         ids=[" ".join(case[0]) for case in SETTINGS])
def test_impossible_settings_stop_the_cli_at_once(tmp_path, capsys, options, setting, allowed):
    out = tmp_path / "out"
    line = run_cli(capsys, *train_argv(tmp_path / "anywhere", out, *options))
    assert setting in line and allowed in line
    assert not out.exists()                        # nothing created, nothing trained


def test_the_api_checks_the_same_settings(tmp_path):
    with pytest.raises(ConfigError, match=r"beta = 5 \(--beta\).*\[0, 1\]"):
        MVFAConfig(beta=5)
    with pytest.raises(ConfigError, match=r"mix = \(nan, 0.5, 0.5\)"):
        preset("fast-cpu", mix=(math.nan, 0.5, 0.5))
    with pytest.raises(ConfigError, match=r"device = 'gpu'"):
        preset("fast-cpu").replace(device="gpu")
    with pytest.raises(ValueError, match="epochs = 0"):   # ConfigError is a ValueError too
        preset("fast-cpu", epochs=0)
    config = preset("fast-cpu", device="cpu")
    config.epochs = 0                                   # changed after construction
    with pytest.raises(ConfigError, match="epochs = 0"):
        experiment.run_few_shot(config, make_dataset(tmp_path / "d"), support_split="test",
                                test_split="test", out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "x", "--iterate", "-1"], "argument --iterate: -1 is too small; it must be >= 0"),
    (["bench", "--batch-size", "0"], "argument --batch-size: 0 is too small; it must be >= 1"),
    (["bench", "--repeats", "two"], "argument --repeats: 'two' is not a whole number"),
])
def test_command_line_only_numbers(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- images: every one opened before training ---------------------------------------------

def save_float(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.float32)).save(path)          # mode F
    return path


def test_all_nan_image_is_refused_not_scored_black(tmp_path):
    path = save_float(tmp_path / "nan.tif", np.full((20, 20), np.nan))
    with pytest.raises(DataError, match=rf"image {path} holds no finite pixel value"):
        load_image(path)


def test_partly_nan_image_is_reported(tmp_path):
    root = make_dataset(tmp_path / "d")
    values = np.tile(np.linspace(0, 1, 20), (16, 1))
    values[:4] = np.nan
    path = save_float(root / "test" / "good" / "img" / "scan.tif", values)
    with pytest.warns(DataWarning, match=rf"1 image\(s\) hold NaN or inf pixels.*{path}"):
        ADDataset(root, "test").check(PATCH, progress=False)


def test_image_smaller_than_a_patch(tmp_path):
    root = make_dataset(tmp_path / "d")
    tiny = write_png(root / "test" / "good" / "img" / "dot.png", size=(1, 1))
    with pytest.raises(DataError, match=rf"image {tiny} is 1x1 pixels, smaller than one "
                                        r"14x14 patch"):
        ADDataset(root, "test").check(PATCH, progress=False)


def test_corrupt_test_image_stops_train_before_training(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d")
    bad = root / "test" / "Ungood" / "img" / "a01.png"
    bad.write_bytes(b"not a png")
    line = run_cli(capsys, *train_argv(root, tmp_path / "out"))
    assert f"cannot read image {bad}" in line and "Replace or delete" in line


def test_several_bad_images_are_named_together(tmp_path):
    root = make_dataset(tmp_path / "d")
    for name in ("n00.png", "n01.png", "n02.png"):
        (root / "test" / "good" / "img" / name).write_bytes(b"broken")
    with pytest.raises(DataError, match=r"3 images cannot be used; fix or remove them. First: "
                                        r"cannot read image .*n00.png.* Also: .*n01.png, .*n02.png"):
        ADDataset(root, "test").check(PATCH, progress=False)


def test_one_class_test_split_stops_train_before_training(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d", split="valid")
    make_dataset(root, split="test", abnormal=0, masks=False)
    line = run_cli(capsys, "train", root, "--preset", "fast-cpu", "--shots", "1",
                   "--out", tmp_path / "out")
    assert f"the test split {root / 'test'} holds 3 normal and 0 abnormal images" in line
    assert "both classes" in line


def test_mask_of_the_wrong_size_stops_train_before_training(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d")
    mask = write_png(root / "test" / "Ungood" / "anomaly_mask" / "a02.png", size=(10, 10))
    line = run_cli(capsys, *train_argv(root, tmp_path / "out"))
    assert f"mask {mask} is 10x10 pixels" in line


# --- masks: binarised at half their value range, doubtful ones named ---------------------

def write_mask(root: Path, name: str, values: np.ndarray) -> Path:
    path = root / "test" / "Ungood" / "anomaly_mask" / name
    Image.fromarray(values).save(path)
    return path


def lesion(foreground: int, background: int = 0) -> np.ndarray:
    values = np.full((16, 20), background, dtype=np.uint8)
    values[4:10, 5:12] = foreground
    return values


def test_mask_with_background_1_is_not_a_whole_image_lesion(tmp_path, recwarn):
    root = make_dataset(tmp_path / "d", abnormal=1)
    write_mask(root, "a00.png", lesion(255, background=1))
    ds = ADDataset(root, "test", image_size=20).check(PATCH, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]
    assert ds[len(ds) - 1]["mask"].sum() == pytest.approx(6 * 7 * (20 * 20) / (16 * 20), rel=0.3)


def test_empty_masks_are_named_and_dropped_pixel_metrics_said(tmp_path):
    root = make_dataset(tmp_path / "d", abnormal=2)
    empty = write_mask(root, "a00.png", lesion(1))          # a 0/1 mask reads as empty
    with pytest.warns(DataWarning, match=r"1 abnormal image\(s\) of .* have an empty mask: "
                                         r".*a00.png\..*saved as 0/1 reads as empty") as info:
        ADDataset(root, "test").check(PATCH, progress=False)
    assert not any("left out" in str(w.message) for w in info)
    write_mask(root, "a01.png", lesion(0))
    with pytest.warns(DataWarning, match=r"2 abnormal.*pixel metrics \(pixel_auroc, pixel_ap, "
                                         r"aupro\) are left out"):
        ADDataset(root, "test").check(PATCH, progress=False)
    assert empty.exists()


def test_whole_image_mask_is_named(tmp_path):
    root = make_dataset(tmp_path / "d", abnormal=1)
    write_mask(root, "a00.png", np.full((16, 20), 255, dtype=np.uint8))
    with pytest.warns(DataWarning, match=r"1 mask\(s\) of .* mark the whole image as lesion: "
                                         r".*a00.png\. Check that they are not inverted"):
        ADDataset(root, "test").check(PATCH, progress=False)


def test_cli_prints_data_warnings_as_one_line(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d", split="valid")
    empty = root / "valid" / "Ungood" / "anomaly_mask" / "a00.png"
    Image.fromarray(lesion(0)).save(empty)                       # a warning, then ...
    make_dataset(root, split="test")
    write_png(root / "test" / "good" / "img" / "dot.png", size=(2, 2))   # ... an error
    assert main([str(a) for a in ["train", root, "--preset", "fast-cpu", "--shots", "1",
                                  "--out", tmp_path / "out"]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in lines[1]
    assert lines[0].startswith(f"mvfa-lite train: warning: 1 abnormal image(s) of "
                               f"{root / 'valid'} have an empty mask")
    assert lines[1].startswith("mvfa-lite train: error: image ") and "dot.png" in lines[1]


# --- symbolic links named like images -----------------------------------------------------

def test_broken_link_is_named_not_skipped(tmp_path):
    root = make_dataset(tmp_path / "d")
    link = root / "test" / "good" / "img" / "n09.png"
    link.symlink_to(tmp_path / "moved" / "n09.png")
    with pytest.raises(DataError, match=rf"do not resolve: {link} -> {tmp_path}/moved/n09.png "
                                        r"\(missing\)\. Repair the links or delete them"):
        ADDataset(root, "test")


def test_looping_links_are_named(tmp_path):
    root = make_dataset(tmp_path / "d")
    masks = root / "test" / "Ungood" / "anomaly_mask"
    (masks / "x.png").symlink_to(masks / "y.png")
    (masks / "y.png").symlink_to(masks / "x.png")
    with pytest.raises(DataError, match=r"x.png \(a loop of links\), .*y.png \(a loop"):
        ADDataset(root, "test")


def test_broken_links_in_image_folders(tmp_path):
    write_png(tmp_path / "images" / "a.png")
    link = tmp_path / "images" / "sub" / "b.jpg"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DataError, match=rf"{link} -> .*gone.jpg \(missing\)"):
        ImageFolder(tmp_path / "images")
    with pytest.raises(DataError, match=rf"{link}"):
        ImageFolder(link)


# --- output folders -------------------------------------------------------------------------

def test_out_is_a_file(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d")
    (tmp_path / "results").write_text("not a folder")
    line = run_cli(capsys, *train_argv(root, tmp_path / "results"))
    assert f"--out {tmp_path / 'results'} is a file, not a folder" in line


def test_out_read_only(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):            # root ignores permission bits ...
        locked = Path("/sys/kernel")          # ... but not a read-only kernel folder
    line = run_cli(capsys, *train_argv(root, locked))
    assert f"cannot write to {locked} (the output folder)" in line


def test_out_that_would_replace_the_data(tmp_path, capsys, no_training):
    root = make_dataset(tmp_path / "d")
    line = run_cli(capsys, *train_argv(root, tmp_path))
    assert f"--out {tmp_path} contains the input {root}" in line
    assert len(list(root.rglob("*.png"))) == 9


def test_predict_never_reads_its_own_output(tmp_path, capsys):
    """--out inside the image folder: the overlays of one run are not scored by the next,
    nor by a run writing elsewhere (it names the folder it does not read)."""
    images = tmp_path / "images"
    for i in range(3):
        write_png(images / f"x{i}.png", size=(32, 32), value=40 * i)
    root = make_dataset(tmp_path / "d")
    assert main([str(a) for a in train_argv(root, tmp_path / "run", "--epochs", "1",
                                            "--image-size", "28", "--no-augment",
                                            "--prompts", "single")]) == 0
    checkpoint = tmp_path / "run" / "adapters.pth"
    for out in (images / "pred", images / "pred", images / "other"):
        assert main(["predict", str(checkpoint), str(images), "--out", str(out),
                     "--device", "cpu"]) == 0
        with open(out / "scores.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert sorted(Path(r["path"]).name for r in rows) == ["x0.png", "x1.png", "x2.png"]
        assert len(list(out.glob("*.png"))) == 3
    assert f"not reading {images / 'pred'}: folder(s) written by mvfa-lite" in \
        capsys.readouterr().err
