"""Issue 24, the bad-input audit's remaining cases: each one stops with one line naming the
setting or file and the fix (exit 2, before any training), or warns, and leaves what is on
disk as it was."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import no_training, run_cli  # noqa: F401 (a fixture and a helper)

from mvfa_lite import outputs
from mvfa_lite.errors import OutputError
from mvfa_lite.outputs import (
    EVALUATE_FILES,
    OUTPUT_MARKER,
    PREDICT_FILES,
    TRAIN_FILES,
    OutputFolder,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --- 1. never delete what mvfa-lite did not write ----------------------------------------

@pytest.mark.parametrize("command, owns, name", [
    ("predict", PREDICT_FILES, "00000_patient_A.png"),
    ("train", TRAIN_FILES, "maps.npz"),
    ("evaluate", EVALUATE_FILES, "scores.csv"),
])
def test_a_users_file_named_like_an_output_is_never_replaced(tmp_path, command, owns, name):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_bytes(b"the user's own")
    (out / "notes.txt").write_text("mine too")
    before = snapshot(out)
    with pytest.raises(OutputError) as info:
        OutputFolder(out, command, owns)
    line = str(info.value)
    assert f"--out {out} holds {name}" in line and "not written by mvfa-lite" in line
    assert "\n" not in line
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_folder_without_marker_keeps_other_files_beside_the_results(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with OutputFolder(out, "predict", PREDICT_FILES).writing() as staging:
        (staging / "00000_a.png").write_bytes(b"png")
        (staging / "scores.csv").write_text("s")
    assert snapshot(out)["notes.txt"] == b"mine"
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["files"] == ["00000_a.png", "scores.csv"]        # notes.txt not claimed


def test_only_the_files_the_marker_lists_are_cleaned(tmp_path):
    out = tmp_path / "run"
    with OutputFolder(out, "predict", PREDICT_FILES).writing() as staging:
        (staging / "00000_a.png").write_bytes(b"old overlay")
        (staging / "00001_b.png").write_bytes(b"old overlay")
        (staging / "scores.csv").write_text("old")
    with OutputFolder(out, "predict", PREDICT_FILES).writing() as staging:   # fewer images
        (staging / "00000_c.png").write_bytes(b"new overlay")
        (staging / "scores.csv").write_text("new")
    assert sorted(snapshot(out)) == [OUTPUT_MARKER, "00000_c.png", "scores.csv"]
    (out / "00007_users.png").write_bytes(b"user")           # added by hand afterwards
    with pytest.raises(OutputError, match="holds 00007_users.png"):
        OutputFolder(out, "predict", PREDICT_FILES)
    assert (out / "00007_users.png").read_bytes() == b"user"


def test_the_marker_keeps_listing_another_commands_results(tmp_path):
    out = tmp_path / "run"
    with OutputFolder(out, "train", TRAIN_FILES).writing() as staging:
        for name in TRAIN_FILES:
            (staging / name).write_text(f"train {name}")
    with OutputFolder(out, "evaluate", EVALUATE_FILES).writing() as staging:
        (staging / "metrics.json").write_text("evaluated")
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert marker["files"] == ["adapters.pth", "metrics.json"] and marker["command"] == "evaluate"
    with OutputFolder(out, "train", TRAIN_FILES).writing() as staging:  # train again: fine
        (staging / "adapters.pth").write_text("new")
    assert sorted(snapshot(out)) == [OUTPUT_MARKER, "adapters.pth"]


# --- 5. a full disk, a quota, a file size limit -------------------------------------------

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_keeps_the_earlier_result(tmp_path, code):
    out = tmp_path / "run"
    with OutputFolder(out, "train", TRAIN_FILES).writing() as staging:
        (staging / "metrics.json").write_text("old")
    before = snapshot(out)
    with pytest.raises(OutputError) as info:
        with OutputFolder(out, "train", TRAIN_FILES).writing():
            raise OSError(code, os.strerror(code))
    assert str(info.value).startswith(f"cannot write the results into {out}: ")
    assert "earlier result there is kept" in str(info.value)
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    write_json(tmp_path / "result.json", {"old": 1})
    with pytest.raises(OutputError, match=r"cannot write result.json into .*: .*earlier"):
        with outputs.atomic_write(tmp_path / "result.json"):
            raise OSError(code, os.strerror(code))
    assert json.loads((tmp_path / "result.json").read_text()) == {"old": 1}


FILE_SIZE_LIMIT = r"""
import resource, signal, sys
from mvfa_lite.outputs import OutputFolder, TRAIN_FILES, write_json
from mvfa_lite.errors import OutputError
from mvfa_lite.tools.cli import main
out = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # so that write() raises EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    with OutputFolder(out, "train", TRAIN_FILES).writing() as staging:
        (staging / "adapters.pth").write_bytes(b"x" * 5000)
except OutputError as error:
    print(error)
try:
    write_json(out + "/result.json", {"big": "y" * 5000})
except OutputError as error:
    print(error)
"""


def test_a_file_size_limit_keeps_the_earlier_result(tmp_path):
    out = tmp_path / "run"
    with OutputFolder(out, "train", TRAIN_FILES).writing() as staging:
        (staging / "adapters.pth").write_text("old")
    write_json(out / "result.json", {"old": 1})
    before = snapshot(out)
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(out)], text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"cannot write the results into {out}: File too large")
    assert lines[1].startswith(f"cannot write result.json into {out}: File too large")
    assert snapshot(out) == before


def _file_size_limit(kib: int):
    """preexec_fn: ``ulimit -f kib``, with SIGXFSZ ignored so that write() raises EFBIG."""
    def limit():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))
    return limit


def test_a_real_train_over_a_file_size_limit_is_one_line_and_keeps_the_result(tmp_path):
    """torch's zip writer fails with "unexpected pos" (no errno): still one line naming the
    folder, exit 2, the staging folder gone and the earlier result whole. The first file a
    training writes is its state after epoch 1 (training_state), so that is where it stops."""
    from test_data import make_dataset
    data, out = make_dataset(tmp_path / "d"), tmp_path / "run"
    argv = [sys.executable, "-m", "mvfa_lite", *map(str, train_argv(data, out, "--epochs", "1"))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr
    before = snapshot(out)
    assert len(before["adapters.pth"]) > 20 * 1024              # over the limit below
    done = subprocess.run([*argv, "--seed", "3"], capture_output=True, text=True, timeout=600,
                          env=env, preexec_fn=_file_size_limit(20))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith(f"mvfa-lite train: error: cannot write .training-state.pt into "
                           f"{out}: torch could not write a file whole"), line
    assert "files limited to 20 KiB by ulimit -f 20" in line and "MiB free there" in line
    assert f"{out} is left as it was" in line
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["d", "run"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs mounted at tmp_path/"disk" (root only), sized by the test: a real full disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full tmpfs needs root to mount it; the ulimit -f test covers the rest")

    def mount(kib: int) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", disk],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        return disk
    yield mount
    subprocess.run(["umount", disk], capture_output=True)


def test_a_real_train_on_a_full_disk_is_one_line_and_keeps_the_result(tmp_path, small_tmpfs):
    """A disk with room for one result but not for a second one staged beside it (ENOSPC,
    not a file-size limit): one line naming the folder, exit 2, the earlier result whole."""
    from test_data import make_dataset
    data, first_out = make_dataset(tmp_path / "d"), tmp_path / "first"
    def argv(out, *options):
        return [sys.executable, "-m", "mvfa_lite",
                *map(str, train_argv(data, out, "--epochs", "1", *options))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    first = subprocess.run(argv(first_out), capture_output=True, text=True, timeout=600,
                           env=env)
    assert first.returncode == 0, first.stderr
    size_kib = sum(p.stat().st_size for p in first_out.rglob("*") if p.is_file()) // 1024
    out = small_tmpfs(size_kib * 3 // 2 + 64) / "run"      # room for 1.5 results
    subprocess.run(["cp", "-a", first_out, out], check=True)
    before = snapshot(out)
    done = subprocess.run(argv(out, "--seed", "3"), capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith("mvfa-lite train: error: cannot write "), line
    assert f"into {out}" in line and "MiB free there" in line, line
    assert snapshot(out) == before and [p.name for p in out.parent.iterdir()] == ["run"]


@pytest.mark.parametrize("case", ["seed file", "weights directory"])
def test_a_refused_run_leaves_no_trace_in_out(tmp_path, capsys, monkeypatch, case):
    from test_data import make_dataset
    out = tmp_path / "runs" / "out"
    root = make_dataset(make_dataset(tmp_path / "d"), "valid")
    argv = train_argv(root, out, "--support-split", "valid")
    if case == "seed file":
        (tmp_path / "1-shot.txt").write_text("this is not a seed file\n")
        argv += ["--seed-file", tmp_path / "1-shot.txt"]
        expected = f"seed file {tmp_path / '1-shot.txt'}"
    else:
        monkeypatch.setenv("MVFA_CLIP_CHECKPOINT", str(tmp_path))
        argv += ["--model", "ViT-B-16", "--pretrained", "openai", "--image-size", "224"]
        expected = f"CLIP checkpoint {tmp_path} is a directory, not a weights file"
    line = run_cli(capsys, *argv)
    assert expected in line
    assert not (tmp_path / "runs").exists()                 # nothing created, not even empty


# --- 3. caches keyed by content -----------------------------------------------------------

def test_converted_weights_are_keyed_by_content_not_name_and_size(tmp_path, monkeypatch):
    """Two OpenAI-style TorchScript files of the same name and size, other weights: each
    loads its own (the cache used to hand the second the first one's weights)."""
    import open_clip
    import torch
    from torchscript_clip import save_torchscript

    from mvfa_lite.method.backbone import load_backbone
    monkeypatch.setenv("MVFA_CACHE", str(tmp_path / "cache"))
    loaded = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        native = open_clip.create_model("ViT-S-16", pretrained=None)
        path = tmp_path / f"copy{seed}" / "ViT-S-16.pt"
        path.parent.mkdir()
        save_torchscript(native, path)
        backbone = load_backbone("ViT-S-16", "openai-file", 224, checkpoint=path)
        torch.testing.assert_close(backbone.clip.visual.conv1.weight, native.visual.conv1.weight)
        loaded.append(path.stat().st_size)
    assert loaded[0] == loaded[1]                                   # same name, same size
    assert len(list((tmp_path / "cache").glob("ViT-S-16-*.state_dict.pt"))) == 2


# --- 4. compare-official copies the official checkout without following links ------------

def test_the_official_checkout_is_copied_without_following_links(tmp_path):
    import shutil

    from mvfa_lite.errors import MVFAError
    from mvfa_lite.tools.compare.staging import stage_code
    checkout = tmp_path / "official"
    shutil.copytree(Path(__file__).resolve().parent / "official_standin", checkout)
    (checkout / "loop").symlink_to(".")                     # copied 40 levels deep before
    (checkout / "CLIP" / "a").symlink_to("b")               # a loop of two links
    (checkout / "CLIP" / "b").symlink_to("a")
    (checkout / "inside").symlink_to("CLIP")
    clip = tmp_path / "weights.pt"
    clip.write_bytes(b"")
    (checkout / "system").symlink_to("/usr/share")          # 141 MB copied before
    with pytest.raises(MVFAError) as info:
        stage_code(checkout, tmp_path / "work", clip)
    line = str(info.value)
    assert f"the link {checkout / 'system'} -> /usr/share leads outside the checkout" in line
    assert "\n" not in line and not (tmp_path / "work").exists()
    (checkout / "system").unlink()
    code = stage_code(checkout, tmp_path / "work", clip)
    for name in ("loop", "inside", "CLIP/a", "CLIP/b"):
        assert (code / name).is_symlink(), name
        assert os.readlink(code / name) == os.readlink(checkout / name)
    assert (code / "inside" / "adapter.py").is_file()


# --- 5. settings and seed files: one line, exit 2, before any training --------------------



def train_argv(root, out, *options) -> list:
    return ["train", root, "--support-split", "test", "--test-split", "test", "--preset",
            "fast-cpu", "--shots", "1", "--device", "cpu", "--out", out, *options]


@pytest.mark.parametrize("seed", ["123456789012345678901234567890", "-3", str(2**63)])
def test_seeds_outside_what_torch_takes(tmp_path, capsys, no_training, seed):
    from test_data import make_dataset
    out = tmp_path / "out"
    line = run_cli(capsys, *train_argv(make_dataset(tmp_path / "d"), out, "--seed", seed))
    assert f"seed = {seed} (--seed)" in line and "from 0 to 2**63 - 1" in line
    assert not out.exists()


def test_a_seed_file_with_a_byte_order_mark_is_read(tmp_path):
    from mvfa_lite.data.shots import read_seed_file
    seed_file = tmp_path / "1-shot.txt"
    seed_file.write_bytes("a-0: a00.png\nn-0: n01.png\n".encode("utf-8-sig"))
    assert read_seed_file(seed_file) == (["n01.png"], ["a00.png"])


@pytest.mark.parametrize("line, fragment", [
    ("n-0: n01.png n01.png", "line 2: n01.png listed more than once"),
    ("n-0: n01.png n01.jpg", "names one normal image twice for this draw"),
])
def test_duplicate_shots_in_a_seed_file_are_refused(tmp_path, capsys, no_training, line,
                                                    fragment):
    from test_data import make_dataset
    seed_file = tmp_path / "2-shot.txt"
    seed_file.write_text(f"a-0: a00.png a01.png\n{line}\n")
    out = tmp_path / "out"
    root = make_dataset(make_dataset(tmp_path / "d"), "valid")
    argv = train_argv(root, out, "--seed-file", seed_file)
    argv[argv.index("--shots") + 1] = "2"
    argv[argv.index("--support-split") + 1] = "valid"
    message = run_cli(capsys, *argv)
    assert f"seed file {seed_file}" in message and fragment in message
    assert not out.exists()                                         # nothing created


# --- 5. checkpoints and weights -----------------------------------------------------------

def test_an_edited_checkpoint_is_called_damaged_not_another_backbone(tmp_path, capsys,
                                                                      tiny_model):
    """evaluate builds the checkpoint's own backbone: a mismatch is an edit, and the message
    names no option that evaluate lacks."""
    import torch
    from test_data import make_dataset

    from mvfa_lite.protocols.checkpoint import save_checkpoint
    path = save_checkpoint(tiny_model, tmp_path / "adapters.pth")
    payload = torch.load(path, weights_only=True)
    payload["backbone"]["image_size"] = 336                       # other dimensions
    torch.save(payload, path)
    data = make_dataset(tmp_path / "d")
    for argv in (["evaluate", path, data], ["predict", path, data / "test" / "good" / "img",
                                            "--out", tmp_path / "p"]):
        line = run_cli(capsys, *argv)
        assert f"checkpoint {path} contradicts itself" in line and "damaged or edited" in line
        assert "--model" not in line and "--pretrained" not in line


def test_the_api_says_how_to_build_the_checkpoints_backbone(tmp_path, tiny_model):
    from mvfa_lite.config import preset
    from mvfa_lite.errors import CheckpointError
    from mvfa_lite.method.model import MVFA
    from mvfa_lite.protocols.checkpoint import load_adapters, save_checkpoint
    path = save_checkpoint(tiny_model, tmp_path / "adapters.pth")
    other = MVFA.from_config(preset("fast-cpu", image_size=28, device="cpu"))
    with pytest.raises(CheckpointError, match=r"another backbone .*model_name='tiny-random'.*"
                                              r"load_trained\(checkpoint\)"):
        load_adapters(other, path)


def test_a_weights_file_with_the_tiny_model_is_refused(tmp_path, capsys):
    from test_data import make_dataset
    clip = tmp_path / "ViT-L-14-336px.pt"
    clip.write_bytes(b"weights")
    out = tmp_path / "out"
    line = run_cli(capsys, *train_argv(make_dataset(tmp_path / "d"), out, "--clip-checkpoint",
                                       clip))
    assert f"--clip-checkpoint {clip} cannot be used with the tiny-random model" in line
    assert not out.exists()


def test_random_weights_of_a_real_architecture_are_built_again_the_same(monkeypatch):
    """Adapters trained with --pretrained random can be evaluated: the same random weights
    are drawn again (they used to be fresh each time, then refused as other weights)."""
    import torch

    from mvfa_lite.method.backbone import load_backbone
    from mvfa_lite.protocols.checkpoint import clip_fingerprint
    torch.manual_seed(1)
    first = load_backbone("ViT-S-16", "random", 224)
    torch.manual_seed(2)
    state = torch.random.get_rng_state()
    second = load_backbone("ViT-S-16", "random", 224)
    assert torch.equal(torch.random.get_rng_state(), state)       # the caller's stream untouched
    assert clip_fingerprint(first) == clip_fingerprint(second)


# --- 5. data: names, links, an --out among the images -------------------------------------

def test_evaluate_out_inside_the_datasets_images_is_refused(tmp_path, capsys, no_training):
    from test_data import make_dataset
    data = make_dataset(tmp_path / "d")
    before = snapshot(data)
    for out in (data / "test" / "good" / "img", data / "test" / "results"):
        line = run_cli(capsys, "evaluate", tmp_path / "adapters.pth", data, "--out", out)
        assert f"--out {out} lies inside the images of the dataset {data} (test/)" in line
    assert snapshot(data) == before
    OutputFolder(data / "runs" / "a", "evaluate", EVALUATE_FILES, inputs=[data])   # fine


def test_a_file_name_that_is_not_utf8_is_named_before_training(tmp_path, capsys, no_training):
    from test_data import make_dataset, write_png
    data = make_dataset(tmp_path / "d")
    bad = os.fsdecode(b"caf\xe9.png")                       # Latin-1, not UTF-8
    write_png(data / "test" / "good" / "img" / bad, value=90)
    out = tmp_path / "out"
    line = run_cli(capsys, *train_argv(data, out))
    assert "the file name " in line and "caf\\xe9.png is not valid UTF-8" in line
    assert not out.exists() or not any(out.iterdir())


def test_predict_warns_about_links_to_folders(tmp_path):
    import warnings

    from test_data import write_png

    from mvfa_lite.data.folder import ImageFolder
    from mvfa_lite.errors import DataWarning
    write_png(tmp_path / "images" / "a.png", value=10)
    write_png(tmp_path / "elsewhere" / "b.png", value=20)
    (tmp_path / "images" / "more").symlink_to(tmp_path / "elsewhere")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = ImageFolder(tmp_path / "images", 28)
    assert [p.name for p in folder.paths] == ["a.png"]
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "link(s) to folders are not followed" in messages[0]
    assert str(tmp_path / "images" / "more") in messages[0]


# --- 6. memory: fused in place, the same numbers ------------------------------------------

def test_fusing_in_place_gives_the_same_numbers():
    import torch

    from mvfa_lite.method.branches import final_scores
    generator = torch.Generator().manual_seed(0)
    zero, few = (torch.rand(5, 8, 8, generator=generator) * 3 for _ in range(2))
    det = torch.rand(5, generator=generator)
    for few_map in (few, None):
        expected = final_scores(zero, det, few_map, det if few_map is not None else None,
                                True, "paper", 0.3)
        copies = [zero.clone(), None if few_map is None else few_map.clone()]
        got = final_scores(copies[0], det, copies[1], det if few_map is not None else None,
                           True, "paper", 0.3, in_place=True)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert got[1].data_ptr() == copies[0].data_ptr()          # no copy of the maps
