"""The inputs of compare-official and the processes it runs: the official code checked and
staged (a copy, patched to run on a CPU), the datasets in its layout, the shared CLIP weights,
adapters moved between the two programs' names, and each program run in its own process (its
record read back, or its seconds timed under cProfile)."""
from __future__ import annotations

import ast
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from PIL import Image

from ...data import catalogue
from ...data.layout import ADDataset
from ...data.shots import augment_shots, select_shots
from ...errors import MVFAError
from ...method.backbone import TINY_MODEL
from ...method.model import MVFA
from ...outputs import atomic_write
from ...protocols import experiment, train
from ...protocols.official_checkpoint import adapter_state, banks_from_official  # noqa: F401
from . import driver

# the official scripts know these dataset keys; ours are staged under them
PROTOCOL_KEYS = {"segmentation": "Brain", "classification": "Chest"}
OFFICIAL_FILES = ("train_few.py", "test_few.py", "utils.py", "loss.py", "CLIP/adapter.py",
                  "CLIP/clip.py", "dataset/medical_few.py")
CUDA_LINE = ".to('cuda')"


def phase_name(function) -> str:
    """``file.py:function`` of a function or code object, as :func:`phase_seconds` reads it."""
    code = getattr(function, "__code__", function)
    return f"{Path(code.co_filename).name}:{code.co_name}"


def _inner(function, name: str) -> types.CodeType:
    """The code of the function ``name`` defined inside ``function`` (a closure)."""
    found = [const for const in function.__code__.co_consts
             if isinstance(const, types.CodeType) and const.co_name == name]
    if len(found) != 1:
        raise LookupError(f"{function.__qualname__} defines {len(found)} functions {name!r}")
    return found[0]


# functions timed inside each program (file:function, cumulative seconds); the official
# code cannot be imported here, so its names are written out
OFFICIAL_PHASES = ("clip.py:create_model", "utils.py:encode_text_with_prompt_ensemble",
                   "utils.py:augment", "train_few.py:test", "train_few.py:main")
OURS_PHASES = tuple(phase_name(function) for function in (
    experiment.build_model, MVFA.text_features, ADDataset.load_all, augment_shots,
    train.compute_stems, _inner(train.train_few_shot, "select"), train.fit,
    experiment.run_few_shot))


class OfficialRunError(MVFAError):
    """The official code (or mvfa-lite's timed run) failed in its subprocess."""


# --- inputs -------------------------------------------------------------------------------
def check_official(official_dir: Path) -> None:
    missing = [name for name in OFFICIAL_FILES if not (official_dir / name).is_file()]
    if missing:
        raise MVFAError(f"{official_dir} is not a checkout of the official MVFA code "
                        f"(MediaBrain-SJTU/MVFA-AD): missing {', '.join(missing)}. Clone it "
                        "and pass its folder.")
    if (official_dir / "CLIP/adapter.py").read_text().count(CUDA_LINE) != 1:
        raise MVFAError(f"{official_dir / 'CLIP/adapter.py'} does not contain exactly one "
                        f"{CUDA_LINE}: this is not the official commit a30bf7b this tool knows.")


def third_party_imports(code: Path) -> set[str]:
    """The top-level modules the official code imports that are neither its own nor Python's."""
    own = {entry.stem for entry in code.iterdir()}
    names = set()
    for file in code.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_bytes(), filename=str(file))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - own - set(sys.stdlib_module_names)


def check_official_python(python: str, code: Path) -> None:
    """Stop in one line, before the official code runs, if ``python`` cannot run it."""
    modules = sorted(third_party_imports(code))
    probe = ("import importlib.util, sys; print(*(m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None))")
    setup = "an environment set up for the official code (see book/benchmarks.md)"
    try:
        completed = subprocess.run([python, "-c", probe, *modules], capture_output=True,
                                   text=True)
    except OSError as error:
        raise MVFAError(f"--official-python {python} cannot be run ({error.strerror}); give "
                        f"the python of {setup}.") from None
    if completed.returncode != 0:
        last_error = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise MVFAError(f"--official-python {python} failed ({last_error}); give the python "
                        f"of {setup}.")
    missing = completed.stdout.split()
    if missing:
        raise MVFAError(f"--official-python {python} lacks {', '.join(missing)}, which the "
                        "official code imports; install them there (pkg_resources comes with "
                        "setuptools<70, sklearn with scikit-learn, PIL with pillow).")


def stage_code(official_dir: Path, work: Path, clip_file: Path) -> Path:
    """A copy of the official code in ``work/code``: the CPU patch, the CLIP weights linked.
    Links are copied as links, never followed (a link loop or a link to /usr would be copied
    whole); a link that leads out of the checkout is refused."""
    code = work / "code"
    ignore = shutil.ignore_patterns(*_NOT_COPIED)
    _refuse_outside_links(official_dir, ignore)
    shutil.copytree(official_dir, code, symlinks=True, ignore=ignore)
    for path in [code, *code.rglob("*")]:       # a read-only checkout gives a read-only copy
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    adapter = code / "CLIP/adapter.py"
    adapter.write_text(adapter.read_text().replace(CUDA_LINE, ".to(x.device)"))
    (code / "CLIP/ckpt").mkdir(exist_ok=True)
    (code / "CLIP/ckpt/ViT-L-14-336px.pt").symlink_to(clip_file.resolve())
    for folder in ("data", "ckpt/few-shot"):
        (code / folder).mkdir(parents=True, exist_ok=True)
    return code


_NOT_COPIED = (".git", "images", "data", "*.pth", "*.pt", "__pycache__")


def _refuse_outside_links(official_dir: Path, ignore) -> None:
    """MVFAError, one line, for the first link below ``official_dir`` (what is copied) that
    leads outside it. Links inside it, loops included, are copied as they are."""
    top = Path(os.path.realpath(official_dir))
    for folder, folders, files in os.walk(official_dir):
        skipped = ignore(folder, folders + files)
        folders[:] = [f for f in folders if f not in skipped]
        for name in folders + files:
            link = Path(folder) / name
            if name in skipped or not link.is_symlink():
                continue
            target = Path(os.path.realpath(link))       # never raises, even for a loop
            if target != top and top not in target.parents:
                raise MVFAError(f"official checkout {official_dir}: the link {link} -> "
                                f"{os.readlink(link)} leads outside the checkout (to {target}); "
                                "links are not followed when the code is copied: replace it by "
                                "the file itself or remove it.")


def stage_dataset(dataset: ADDataset, key: str, code: Path, shots: int, seed: int) -> Path:
    """``dataset`` in the official layout as ``code/data/<key>_AD``: the k normal + k abnormal
    shots (a seeded draw) in valid/, the rest in test/, and the official seed file listing
    the shots. Returns the staged root (mvfa-lite reads the same files)."""
    chosen = select_shots(dataset, shots, seed=seed)
    root = code / "data" / f"{key}_AD"
    if "img" in str(root):
        raise MVFAError(f"the work folder {root} contains 'img', which the official code "
                        "replaces to find masks; choose another --work-dir.")
    names = {"n": [], "a": []}
    for index, item in enumerate(dataset.items):
        split = "valid" if index in chosen else "test"
        kind = "Ungood" if item.label else "good"
        name = _staged_name(item.image_path)
        if "img" in name:
            raise MVFAError(f"image {item.image_path} has 'img' in its name, which the "
                            "official code replaces to find masks; rename it.")
        _stage_image(item.image_path, root / split / kind / "img" / name)
        if item.mask_path is not None:
            target = root / split / kind / "anomaly_mask" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.mask_path, target)
        if split == "valid":
            names["a" if item.label else "n"].append(name)
    for split in ("valid", "test"):
        for kind in ("good", "Ungood"):
            (root / split / kind / "img").mkdir(parents=True, exist_ok=True)
    seed_file = code / "dataset" / "fewshot_seed" / key / f"{shots}-shot.txt"
    seed_file.parent.mkdir(parents=True, exist_ok=True)
    seed_file.write_text("".join(f"{kind}-0: {' '.join(names[kind])}\n" for kind in ("a", "n")))
    return root


def _staged_name(path: Path) -> str:
    """The official code takes shots only from .png and .jpeg files."""
    suffix = path.suffix.lower()
    return path.stem + (".jpeg" if suffix in (".jpg", ".jpeg") else ".png")


def _stage_image(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() in (".png", ".jpeg", ".jpg"):
        shutil.copyfile(source, target)
    else:                                               # .bmp, .tif: the same pixels as PNG
        with Image.open(source) as image:
            image.save(target)


def write_clip_weights(model_name: str, path: Path, seed: int = 0) -> Path:
    """A seeded random CLIP state dict: the same weights in both programs, never a result.

    The values are rounded to fp16 (stored as fp32): the official loader passes the weights
    through fp16, as OpenAI's own checkpoints are, so only fp16 values reach both programs
    unchanged. (The tiny test model is mvfa-lite's own, saved as it is.)"""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if model_name == TINY_MODEL:
            from ...method.backbone import load_backbone
            torch.save(load_backbone(TINY_MODEL).clip.state_dict(), path)
            return path
        import open_clip
        clip = open_clip.create_model(model_name, pretrained=None)
    state = {name: value.half().float() if value.is_floating_point() else value
             for name, value in clip.state_dict().items()}
    torch.save(state, path)
    return path


def nudge_by_one_ulp(model) -> None:
    """Move every adapter weight to the next float up: a change of rounding size."""
    with torch.no_grad():
        for weight in model.banks.parameters():
            weight.copy_(torch.nextafter(weight, torch.full_like(weight, float("inf"))))


def default_split(root: Path) -> str:
    """A named set's test split; else the folder's only split; else "test"."""
    if root.name in catalogue.SPLITS:
        return catalogue.splits(root.name)[1]
    found = [p.name for p in root.iterdir() if (p / "good").is_dir()]
    return found[0] if len(found) == 1 else "test"


def default_datasets() -> dict:
    """The sets the command uses when none is given (they must be on this machine)."""
    return {"segmentation_data": catalogue.path("chestxray_synthlesion"),
            "classification_data": catalogue.path("chestxray_kermany224")}


# --- running a program in its own process ------------------------------------------------------
def run_observed(python: str, script_and_args: list[str], out: Path, log: Path, *, cwd: Path,
                 count_flops: bool = False, init: dict | None = None, env=None) -> dict:
    """Run an official script under driver.py in its own process (in ``env``, default this
    process's environment); return its record (read back when ``out`` exists: a resumed run)."""
    if out.is_file():
        return torch.load(out, weights_only=True)
    command = [python, driver.__file__, "--official"]
    if count_flops:
        command.append("--count-flops")
    for name, value in (init or {}).items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    with atomic_write(out) as temporary:
        _run([*command, "--out", str(temporary), "--", *script_and_args], cwd, log, env)
    return torch.load(out, weights_only=True)


def timed_run(command: list[str], *, cwd: Path, log: Path, phases=(), env=None) -> dict:
    """Run a program as a user would, under cProfile only (to time the functions named in
    ``phases``, ``file.py:function``): wall seconds, CPU seconds (user + system, all its
    threads), the machine's load average before and after."""
    profile = log.with_suffix(".prof")
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    _run([command[0], "-m", "cProfile", "-o", str(profile), *command[1:]], cwd, log, env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "load_average": [load_before, os.getloadavg()[0]],
            "phases_s": phase_seconds(profile, phases)}


def phase_seconds(profile: Path, names) -> dict:
    """Cumulative seconds of each function named ``file.py:function`` in a cProfile file."""
    seconds = dict.fromkeys(names, 0.0)
    stats = pstats.Stats(str(profile)).stats
    for (filename, _, function), (_, _, _, cumulative, _) in stats.items():
        for name in names:
            file, _, wanted = name.rpartition(":")
            if function == wanted and filename.endswith(file):
                seconds[name] += cumulative
    return seconds


def _run(command: list[str], cwd: Path, log: Path, env=None) -> None:
    with open(log, "w") as handle:
        completed = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                   env=env)
    if completed.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise OfficialRunError(f"{' '.join(command[:4])} ... failed (exit "
                               f"{completed.returncode}); its output is in {log}:\n{tail}")


def ours_env() -> dict:
    """The environment for mvfa-lite's own process: this mvfa_lite package first."""
    package_root = str(Path(__file__).resolve().parents[3])     # holds mvfa_lite/
    paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TQDM_DISABLE": "1"}


