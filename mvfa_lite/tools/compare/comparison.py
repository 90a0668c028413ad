"""``mvfa-lite compare-official``: mvfa-lite and the official MVFA code, side by side.

Both programs get the same inputs: one CLIP state dict (a seeded random ViT-L/14@336 unless
real weights are given), the official adapter initialisation, and datasets staged in the
official layout with their seed files. Then, on each program:

1. scoring, once per protocol (a set with masks run as 'Brain': segmentation; one without as
   'Chest': classification): the official test script with the initial adapters against
   mvfa-lite's paper protocol: image and pixel scores, AUROC, text features, and the focal
   and dice losses on fixed inputs;
2. training: one official epoch (batch 1, its own shuffled order and initialisation) against
   mvfa-lite's loop fed the same initialisation and the same order: the loss of every step
   and the adapters after the epoch. At batch 1 this optimisation amplifies rounding (about
   tenfold every seven steps), so mvfa-lite also runs the epoch from its initial adapters
   moved by one ulp: how far it drifts from itself is the yardstick for the two programs;
3. speed: the official training script and ``mvfa-lite train`` doing the same epoch (88
   steps at k = 4, then a test pass to select the epoch), each in its own process: wall and
   CPU seconds, the arithmetic done (FLOP, forward and backward) and the rate it ran at
   against this machine's matrix-multiply peak, measured in the same run.

The official code is never changed in place. A temporary copy is staged; in that copy its one
hard-wired ``.to('cuda')`` (CLIP/adapter.py) becomes ``.to(x.device)`` so that it runs on a
CPU. It runs in its own Python (``official_python``: torch, kornia, ftfy, scikit-learn, ...),
under ``driver.py``, which observes it through the names its scripts import.
"""
from __future__ import annotations

import ast
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from ...config import MVFAConfig
from ...data import catalogue
from ...data.layout import ADDataset
from ...data.shots import ShotSet, normal_bank_images, select_shots, shot_set
from ...errors import MVFAError
from ...method.backbone import TINY_MODEL
from ...method.losses import dice_loss, focal_loss
from ...method.prompts import object_name
from ...protocols.evaluate import StemSet, build_memory_bank, score_dataset
from ...protocols.experiment import build_model, few_shot_data
from ...protocols.train import Source, compute_stems, fit
from ...runtime import cpu_bf16_speedup, cpu_precision
from ..bench import gemm_peak
from ..flops import FlopCount
from . import driver

# pass marks (paper protocol, fp32)
SCORE_PEARSON, AUROC_TOLERANCE = 0.999, 1e-3
# training: the first steps, before rounding has grown, agree to this; after them the two
# programs may drift apart by up to ROUNDING_FACTOR times what one ulp makes of mvfa-lite
# (the median |difference| of the step losses over the epoch)
EXACT_STEPS, STEP_TOLERANCE, ROUNDING_FACTOR = 8, 1e-5, 2.0
# the official scripts know these dataset keys; ours are staged under them
PROTOCOL_KEYS = {"segmentation": "Brain", "classification": "Chest"}
OFFICIAL_FILES = ("train_few.py", "test_few.py", "utils.py", "loss.py", "CLIP/adapter.py",
                  "CLIP/clip.py", "dataset/medical_few.py")
CUDA_LINE = ".to('cuda')"
# functions timed inside each program (file:function, cumulative seconds)
OFFICIAL_PHASES = ("clip.py:create_model", "utils.py:encode_text_with_prompt_ensemble",
                   "utils.py:augment", "train_few.py:test", "train_few.py:main")
OURS_PHASES = ("experiment.py:build_model", "model.py:text_features", "data.py:load_all",
               "data.py:augment_shots", "train.py:compute_stems", "train.py:select", "train.py:fit",
               "experiment.py:run_few_shot")


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
    """A copy of the official code in ``work/code``: the CPU patch, the CLIP weights linked."""
    code = work / "code"
    shutil.copytree(official_dir, code, ignore=shutil.ignore_patterns(
        ".git", "images", "data", "*.pth", "*.pt", "__pycache__"))
    for path in [code, *code.rglob("*")]:       # a read-only checkout gives a read-only copy
        path.chmod(path.stat().st_mode | 0o200)
    adapter = code / "CLIP/adapter.py"
    adapter.write_text(adapter.read_text().replace(CUDA_LINE, ".to(x.device)"))
    (code / "CLIP/ckpt").mkdir(exist_ok=True)
    (code / "CLIP/ckpt/ViT-L-14-336px.pt").symlink_to(clip_file.resolve())
    for folder in ("data", "ckpt/few-shot"):
        (code / folder).mkdir(parents=True, exist_ok=True)
    return code


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


def banks_from_official(model, state: dict) -> None:
    """Load official adapters ({'seg_adapters', 'det_adapters'} state dicts) into ``model``:
    fc1 -> down, fc2 -> up (the last level's fc2 never gets a gradient; ours has none)."""
    for ours, theirs in ((model.banks.seg, state["seg_adapters"]),
                         (model.banks.det, state["det_adapters"])):
        with torch.no_grad():
            for level, adapter in enumerate(ours):
                adapter.down[0].weight.copy_(theirs[f"{level}.fc1.0.weight"])
                if adapter.up is not None:
                    adapter.up[0].weight.copy_(theirs[f"{level}.fc2.0.weight"])


def adapter_state(model) -> dict:
    """mvfa-lite's adapter weights under the official names (the inverse of
    :func:`banks_from_official`)."""
    state = {}
    for ours, bank in ((model.banks.seg, "seg_adapters"), (model.banks.det, "det_adapters")):
        state[bank] = {}
        for level, adapter in enumerate(ours):
            state[bank][f"{level}.fc1.0.weight"] = adapter.down[0].weight.detach().cpu().clone()
            if adapter.up is not None:
                state[bank][f"{level}.fc2.0.weight"] = adapter.up[0].weight.detach().cpu().clone()
    return state


def adapter_difference(ours: dict, initial: dict, final: dict) -> tuple[float, float]:
    """After training: max |ours - final| over every adapter weight in ``ours`` (official
    names), and the largest ||ours - final|| / ||final - initial|| of one weight matrix (how far
    apart the two updates are, relative to the update itself)."""
    absolute, relative = 0.0, 0.0
    for bank, weights in ours.items():
        for name, weight in weights.items():
            gap = weight - final[bank][name]
            update = (final[bank][name] - initial[bank][name]).norm().item()
            absolute = max(absolute, gap.abs().max().item())
            relative = max(relative, gap.norm().item() / max(update, 1e-12))
    return absolute, relative


def nudge_by_one_ulp(model) -> None:
    """Move every adapter weight to the next float up: a change of rounding size."""
    with torch.no_grad():
        for weight in model.banks.parameters():
            weight.copy_(torch.nextafter(weight, torch.full_like(weight, float("inf"))))


def step_agreement(reference, other) -> dict:
    """Two runs' per-step losses: Pearson, max and median |difference|, the largest
    |difference| over the first EXACT_STEPS steps, and the first step that differs by > 1e-4."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    gap = np.abs(reference - other)
    return {**agreement(reference, other), "median_abs_diff": float(np.median(gap)),
            "first_steps_max_abs_diff": float(gap[:EXACT_STEPS].max()),
            "first_step_over_1e-4": int(np.argmax(gap > 1e-4)) if (gap > 1e-4).any() else None}


# --- running a program in its own process ------------------------------------------------------
def run_observed(python: str, script_and_args: list[str], out: Path, log: Path, *, cwd: Path,
                 count_flops: bool = False, init: dict | None = None) -> dict:
    """Run an official script under driver.py in its own process; return its record
    (read back when ``out`` exists: a resumed run)."""
    if out.is_file():
        return torch.load(out, weights_only=True)
    command = [python, driver.__file__, "--official"]
    if count_flops:
        command.append("--count-flops")
    for name, value in (init or {}).items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    _run([*command, "--out", str(out.with_suffix(".tmp")), "--", *script_and_args], cwd, log)
    out.with_suffix(".tmp").replace(out)
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


def _ours_env() -> dict:
    """The environment for mvfa-lite's own process: this mvfa_lite package first."""
    package_root = str(Path(__file__).resolve().parents[3])     # holds mvfa_lite/
    paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TQDM_DISABLE": "1"}


# --- comparisons -------------------------------------------------------------------------------
def pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def agreement(official, ours) -> dict:
    official, ours = np.asarray(official, np.float64), np.asarray(ours, np.float64)
    return {"pearson": pearson(official, ours),
            "max_abs_diff": float(np.abs(official - ours).max())}


def _official_scores(record: dict, has_masks: bool) -> dict:
    """What the official test passed to roc_auc_score: pixel scores (N*S*S) first when the set
    has masks, then image scores (N)."""
    calls = record["auroc"][-2:] if has_masks else record["auroc"][-1:]
    scores = {"image": calls[-1]}
    if has_masks:
        scores["pixel"] = calls[0]
    return scores


def compare_scores(official: dict, test_paths: list[str], scores, has_masks: bool) -> dict:
    """Image (and pixel) scores and AUROC of both programs, the images matched by file name."""
    ours_index = {Path(p).name: i for i, p in enumerate(scores.paths)}
    order = [ours_index[Path(p).name] for p in test_paths]
    result = {}
    ours_image = scores.image_scores[order].numpy()
    result["image"] = {**agreement(official["image"]["y_score"], ours_image),
                       "auroc_official": official["image"]["value"],
                       "auroc_ours": float(roc_auc_score(scores.labels[order].numpy(), ours_image))}
    if has_masks:
        ours_maps = scores.maps[order].numpy().ravel()
        masks = (scores.masks[order].numpy().ravel() > 0.5).astype(int)
        result["pixel"] = {**agreement(official["pixel"]["y_score"], ours_maps),
                           "auroc_official": official["pixel"]["value"],
                           "auroc_ours": float(roc_auc_score(masks, ours_maps))}
    for part in result.values():
        part["auroc_diff"] = abs(part["auroc_official"] - part["auroc_ours"])
        part["passed"] = part["pearson"] >= SCORE_PEARSON and part["auroc_diff"] <= AUROC_TOLERANCE
    return result


def fixed_loss_inputs(size: int = 48, seed: int = 0) -> dict:
    """Probabilities (2, 2, S, S) and binary masks (2, S, S) for the losses on fixed inputs."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(2, 2, size, size, generator=generator).mul(3).softmax(dim=1)
    masks = (torch.rand(2, size, size, generator=generator) > 0.7).float()
    masks[1] = 0                                       # a normal image: an empty mask
    return {"probs": probs, "masks": masks}


def data_order(official_fingerprints: torch.Tensor, shots: ShotSet, tolerance: float = 1e-3):
    """The official training order as indices into ``shots`` (None when it cannot be matched
    one to one), and the largest fingerprint distance of the match."""
    ours = driver.fingerprint(shots.images)
    distance = torch.cdist(official_fingerprints.double(), ours.double())
    nearest = distance.min(dim=1)
    order = nearest.indices
    worst = float(nearest.values.max())
    if worst > tolerance or len(set(order.tolist())) != len(order) or len(order) != len(ours):
        return None, worst
    return order, worst


def _test_split(root: Path) -> str:
    """A named set's test split; else the folder's only split; else "test"."""
    if root.name in catalogue.SPLITS:
        return catalogue.splits(root.name)[1]
    found = [p.name for p in root.iterdir() if (p / "good").is_dir()]
    return found[0] if len(found) == 1 else "test"


# --- the whole comparison ------------------------------------------------------------------------
PARTS = ("scoring", "training", "speed")


def compare_official(official_dir, *, official_python: str, segmentation_data=None,
                     classification_data=None, split: str | None = None, shots: int = 4,
                     model_name: str = "ViT-L-14-336", clip_checkpoint=None, init_seed: int = 123,
                     shot_seed: int = 0, parts=PARTS, speed_precision: str = "fp32",
                     work_dir=None, keep: bool = False, resume: bool = False,
                     say=print) -> dict:
    """Run both programs on the same inputs; returns the report (see :func:`format_report`).

    ``segmentation_data`` / ``classification_data``: dataset folders (one split, ``split``,
    holding normal and abnormal images; masks for the first), staged as 'Brain' and 'Chest'.
    ``split=None``: each named set's test split, else the folder's only split.
    ``None`` skips that protocol. Training and speed run on the segmentation set (or the
    classification set when it is the only one); speed needs training (its FLOP counts).
    ``work_dir``: a new or empty folder, kept; with ``resume``, the folder of an interrupted
    run with the same inputs: the parts it finished are read back, the rest is run.
    """
    official_dir = Path(official_dir).expanduser().resolve()
    check_official(official_dir)
    unknown = set(parts) - set(PARTS)
    if unknown or not parts or ("speed" in parts and "training" not in parts):
        raise ValueError(f"parts must be some of {PARTS} (speed needs training), got {parts}")
    if speed_precision not in ("fp32", "auto"):
        raise ValueError(f"speed_precision must be 'fp32' or 'auto', got {speed_precision!r}")
    sets = {key: ADDataset(root, split or _test_split(Path(root))) for key, root in
            ((PROTOCOL_KEYS["segmentation"], segmentation_data),
             (PROTOCOL_KEYS["classification"], classification_data)) if root is not None}
    if not sets:
        raise MVFAError("give at least one dataset (segmentation or classification).")
    if "Brain" in sets and not sets["Brain"].has_masks:
        raise MVFAError(f"the segmentation set {segmentation_data} has no Ungood/anomaly_mask "
                        "folder; give a set with masks.")
    inputs = {"official_dir": str(official_dir), "model": model_name, "split": split,
              "shots": shots, "init_seed": init_seed, "shot_seed": shot_seed,
              "clip_checkpoint": None if clip_checkpoint is None else str(clip_checkpoint),
              "datasets": {key: str(Path(data.root).resolve()) for key, data in sets.items()}}
    if work_dir is not None:                  # the user's folder: used if empty, then kept
        work = Path(work_dir).expanduser().resolve()
        _check_work_dir(work, inputs, resume)
    else:
        work = Path(tempfile.mkdtemp(prefix="mvfa-compare-"))
    (work / "inputs.json").write_text(json.dumps(inputs, indent=1))
    try:
        return _Comparison(official_dir, official_python, sets, shots, model_name,
                           clip_checkpoint, init_seed, shot_seed, work, say).run(
                               parts, speed_precision)
    finally:
        if work_dir is None and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"staged inputs, logs and outputs kept in {work}")


def _check_work_dir(work: Path, inputs: dict, resume: bool) -> None:
    if not work.exists() or not any(work.iterdir()):
        work.mkdir(parents=True, exist_ok=True)
        return
    if not resume:
        raise MVFAError(f"the work folder {work} is not empty; give a new or empty one, or "
                        "--resume to finish the run staged there.")
    saved = work / "inputs.json"
    if not saved.is_file() or json.loads(saved.read_text()) != inputs:
        raise MVFAError(f"{work} holds a run with other inputs (see {saved}); --resume needs "
                        "the same official code, datasets, shots, model and seeds.")


class _Comparison:
    """The inputs staged once, then each part of the comparison (one method each)."""

    def __init__(self, official_dir, official_python, sets, shots, model_name, clip_checkpoint,
                 init_seed, shot_seed, work, say):
        self.started, self.say, self.work = time.perf_counter(), say, work
        self.official_python, self.shots = official_python, shots
        self.model_name = model_name
        self.init_seed, self.tiny = init_seed, model_name == TINY_MODEL
        self.done_file = work / "parts-done.json"          # what a resumed run reads back
        self.done = json.loads(self.done_file.read_text()) if self.done_file.is_file() else {}
        if clip_checkpoint is not None:
            self.clip_file = Path(clip_checkpoint).expanduser().resolve()
        else:
            self.clip_file = work / "clip-random.pt"
            if not self.clip_file.is_file():
                self.step(f"writing seeded random {model_name} weights")
                write_clip_weights(model_name, work / "clip-random.tmp")
                (work / "clip-random.tmp").replace(self.clip_file)
        self.code = work / "code"
        if not (work / "staged").is_file():             # staging finished, or start again
            shutil.rmtree(self.code, ignore_errors=True)
            stage_code(official_dir, work, self.clip_file)
            for key, data in sets.items():
                stage_dataset(data, key, self.code, shots, shot_seed)
            (work / "staged").touch()
        self.roots = {key: self.code / "data" / f"{key}_AD" for key in sets}
        (work / "logs").mkdir(exist_ok=True)
        self.config = MVFAConfig(model_name=model_name, protocol="paper", precision="fp32",
                                 pretrained="random" if self.tiny else "openai", device="cpu",
                                 shots=shots, epochs=1)
        self.step("building mvfa-lite's model")
        self.model = build_model(self.config, None if self.tiny else self.clip_file)
        levels = self.model.levels
        self.official_args = ["--shot", str(shots), "--iterate", "0", "--features_list",
                              *map(str, levels)]
        self.report = {
            "official_dir": str(official_dir), "model": model_name, "shots": shots,
            "init_seed": init_seed, "machine": machine(),
            "weights": "seeded random (torch.manual_seed(0)): the figures test the code, they "
                       "are not results" if clip_checkpoint is None else str(self.clip_file)}

    @cached_property
    def python(self) -> str:
        """The official interpreter, checked on first use (a resumed run may not need it)."""
        check_official_python(self.official_python, self.code)
        return self.official_python

    def finished(self, name: str, value) -> None:
        """Keep a finished part's result, so that a resumed run does not redo it."""
        self.done[name] = value
        temporary = self.done_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.done))
        temporary.replace(self.done_file)

    def step(self, text: str) -> None:
        self.say(f"[{time.perf_counter() - self.started:6.0f} s] {text}", flush=True)

    def seed_file(self, key: str) -> Path:
        return self.code / "dataset" / "fewshot_seed" / key / f"{self.shots}-shot.txt"

    def data(self, key: str):
        """(augmented shots, test set) as mvfa-lite's paper protocol reads the staged set."""
        support, test, _ = few_shot_data(self.config, self.roots[key], "valid", "test",
                                         self.seed_file(key))
        loaded = support.load_all(progress=False)
        return shot_set(loaded["image"], loaded["mask"], loaded["label"], augment=True), test

    def run(self, parts, speed_precision: str) -> dict:
        if "scoring" in parts:
            self.scoring()
        key = "Brain" if "Brain" in self.roots else "Chest"
        if "training" in parts:
            self.training(key)
        if "speed" in parts:
            self.speed(key, speed_precision)
        checks = [entry["passed"] for entry in self.report.get("scoring", {}).values()]
        checks += [self.report[name]["passed"] for name in ("losses", "training")
                   if name in self.report]
        self.report["passed"] = all(checks)
        self.report["seconds"] = time.perf_counter() - self.started
        return self.report

    def scoring(self) -> None:
        """Untrained adapters (the official initialisation), both protocols."""
        self.report["scoring"] = {}
        torch.save(fixed_loss_inputs(), self.work / "loss-inputs.pt")
        backbone = self.model.backbone
        for key in self.roots:
            if f"scoring {key}" in self.done:
                self.report["scoring"][key], self.report["losses"] = self.done[f"scoring {key}"]
                continue
            self.step(f"official scoring ({key}, test_few.py) ...")
            init_path = self.code / "ckpt" / "few-shot" / f"{key}.pth"
            record = run_observed(
                self.python, ["test_few.py", "--obj", key, *self.official_args,
                              "--save_path", "./ckpt/few-shot/"],
                self.work / f"official-score-{key}.pt",
                self.work / "logs" / f"official-score-{key}.log", cwd=self.code,
                init=dict(init_seed=self.init_seed, init_path=init_path, width=backbone.width,
                          bottleneck=backbone.embed_dim, levels=len(self.model.levels),
                          losses=self.work / "loss-inputs.pt"))
            self.step(f"mvfa-lite scoring ({key}) ...")
            banks_from_official(self.model, torch.load(init_path, weights_only=True))
            shots, test = self.data(key)
            text = self.model.text_features(object_name(test.name))
            bank = build_memory_bank(self.model, normal_bank_images(shots))
            scores = score_dataset(self.model, test, text, bank, progress=False)
            entry = compare_scores(_official_scores(record, test.has_masks),
                                   record["test_paths"], scores, test.has_masks)
            entry["text_max_abs_diff"] = float((record["text"][0] - text.cpu()).abs().max())
            entry["test_images"] = len(test)
            entry["passed"] = all(part["passed"] for part in entry.values()
                                  if isinstance(part, dict))
            self.report["scoring"][key] = entry
            self.report["losses"] = compare_losses(record["losses"])
            self.finished(f"scoring {key}", [entry, self.report["losses"]])

    def training(self, key: str) -> None:
        """One official epoch (observed, FLOP counted) and mvfa-lite's loop fed its
        initialisation and its data order (FLOP counted the same way)."""
        if "training" in self.done:
            self.report["training"] = self.done["training"]
            return
        self.step(f"official training epoch, observed ({key}, train_few.py --epoch 1) ...")
        official = run_observed(
            self.python, ["train_few.py", "--obj", key, *self.official_args, "--epoch", "1",
                          "--save_model", "0"],
            self.work / "official-train.pt", self.work / "logs" / "official-train.log",
            cwd=self.code, count_flops=True)
        self.step("mvfa-lite training epoch in the official order ...")
        shots, test = self.data(key)
        order, worst = data_order(official["fingerprints"], shots)
        result = {"official_steps": len(official["step_losses"]), "batch_size": 1,
                  "order_max_fingerprint_distance": worst, "order_reproduced": order is not None,
                  "official_flops": official["flops"]}
        self.report["training"] = result
        if order is None:
            result.update(passed=False, reason="the official training images could not be "
                          "matched one to one with mvfa-lite's augmented shots")
            return
        model = self.model
        ordered = ShotSet(shots.images[order], shots.masks[order], shots.labels[order])
        model._text_cache.clear()                   # count the text features too
        with FlopCount() as count:                  # the work of `mvfa-lite train`, as it does it
            text = model.text_features(object_name(test.name))
            stems = compute_stems(model, ordered)
            trained, scores = self.epoch(official["init"], ordered, text, test, stems)
        ours = adapter_state(model)
        self.step("mvfa-lite again, its initial adapters moved by one ulp (the rounding "
                  "yardstick) ...")
        nudged, nudged_scores = self.epoch(official["init"], ordered, text, test, stems,
                                           nudge=True)
        result.update(ours_flops={"forward": count.forward, "backward": count.backward},
                      **training_report(official, trained, scores, ours, nudged, nudged_scores,
                                        adapter_state(model), test))
        self.finished("training", result)

    def epoch(self, init: dict, ordered: ShotSet, text, test, stems, nudge: bool = False):
        """One epoch at batch 1 in the given order from the official initialisation (moved by
        one ulp with ``nudge``), then the test pass that ends every official epoch."""
        model = self.model
        banks_from_official(model, init)
        if nudge:
            nudge_by_one_ulp(model)
        trained = fit(model, [Source(test.name, ordered, text, test.has_masks)], epochs=1,
                      lr=self.config.lr, batch_size=1, shuffle=False, progress=False,
                      stems=[stems])
        bank = build_memory_bank(model, stems=stems[ordered.labels == 0])
        return trained, score_dataset(model, StemSet(model, test), text, bank, progress=False)

    def speed(self, key: str, precision: str) -> None:
        """The same epoch in each program, as its users run it, timed (both in one go)."""
        if "speed" in self.done:
            self.report["speed"] = self.done["speed"]
            return
        peak = gemm_peak()
        self.step("official training epoch, timed (train_few.py --epoch 1) ...")
        official = timed_run(
            [self.python, "train_few.py", "--obj", key, *self.official_args, "--epoch", "1",
             "--save_model", "0"], cwd=self.code, log=self.work / "logs" / "official-timed.log",
            phases=OFFICIAL_PHASES)
        self.step(f"mvfa-lite train, timed ({precision}) ...")
        ours = timed_run([sys.executable, "-m", "mvfa_lite.tools.cli", *self.train_arguments(
            key, precision)], cwd=self.work, log=self.work / "logs" / "ours-timed.log",
            phases=OURS_PHASES, env=_ours_env())
        training = self.report["training"]
        test_images = len(ADDataset(self.roots[key], "test"))
        self.report["speed"] = speed_report(
            {**official, "flops": training["official_flops"]},
            {**ours, "flops": training["ours_flops"]}, peak, precision,
            f"{key}, k = {self.shots}: one epoch of {22 * self.shots} augmented shots at batch "
            f"1, then the memory bank and one test pass over {test_images} images (the "
            "official epoch selection)")
        self.finished("speed", self.report["speed"])

    def train_arguments(self, key: str, precision: str) -> list[str]:
        arguments = ["train", str(self.roots[key]), "--support-split", "valid", "--test-split",
                     "test", "--seed-file", str(self.seed_file(key)), "--shots", str(self.shots),
                     "--epochs", "1", "--protocol", "paper", "--device", "cpu",
                     "--out", str(self.work / "ours-train")]
        if self.tiny:
            arguments += ["--model", TINY_MODEL, "--pretrained", "random"]
        else:
            arguments += ["--model", self.model_name, "--clip-checkpoint", str(self.clip_file)]
        return arguments + ["--precision", precision]


def training_report(official: dict, trained, scores, ours: dict, nudged, nudged_scores,
                    nudged_state: dict, test) -> dict:
    """The training comparison: official against mvfa-lite, and mvfa-lite against itself moved
    by one ulp (the rounding yardstick); passed when the first steps agree to rounding and the
    programs drift apart no more than ROUNDING_FACTOR times the yardstick."""
    def after_epoch(run_scores) -> dict:
        return compare_scores(_official_scores(official, test.has_masks),
                              official["test_paths"], run_scores, test.has_masks)
    after, nudged_after = after_epoch(scores), after_epoch(nudged_scores)
    losses = step_agreement(official["step_losses"], trained.step_losses)
    yardstick = step_agreement(trained.step_losses, nudged.step_losses)
    absolute, relative = adapter_difference(ours, official["init"], official["final"])
    nudged_absolute, nudged_relative = adapter_difference(nudged_state, official["init"], ours)
    allowed = max(ROUNDING_FACTOR * yardstick["median_abs_diff"], STEP_TOLERANCE)
    return dict(
        step_losses=losses, rounding_yardstick=yardstick, ours_steps=len(trained.step_losses),
        first_loss=[official["step_losses"][0], trained.step_losses[0]],
        last_loss=[official["step_losses"][-1], trained.step_losses[-1]],
        adapters_max_abs_diff=absolute, adapters_relative_diff=relative,
        yardstick_adapters_max_abs_diff=nudged_absolute,
        yardstick_adapters_relative_diff=nudged_relative,
        auroc_after_epoch={part: [values["auroc_official"], values["auroc_ours"],
                                  nudged_after[part]["auroc_ours"]]
                           for part, values in after.items()},
        passed=len(trained.step_losses) == len(official["step_losses"])
        and losses["first_steps_max_abs_diff"] <= STEP_TOLERANCE
        and losses["median_abs_diff"] <= allowed)


def compare_losses(official: dict) -> dict:
    """The official FocalLoss and BinaryDiceLoss (computed by the driver) against ours."""
    inputs = fixed_loss_inputs()
    ours = {"focal": float(focal_loss(inputs["probs"], inputs["masks"])),
            "dice": float(dice_loss(inputs["probs"][:, 1], inputs["masks"]))}
    result = {name: {"official": official[name], "ours": ours[name],
                     "abs_diff": abs(official[name] - ours[name])} for name in ours}
    result["passed"] = all(part["abs_diff"] <= 1e-6 for part in result.values())
    return result


# --- speed ---------------------------------------------------------------------------------------
def speed_report(official: dict, ours: dict, peak: dict, precision: str, recipe: str) -> dict:
    """Seconds (timed runs) and FLOP (counted runs) of each program -> rates and ratios."""
    ours_dtype = cpu_precision() if precision == "auto" else "fp32"

    def program(run: dict, dtype: str) -> dict:
        forward, backward = run["flops"]["forward"], run["flops"]["backward"]
        total = forward + backward
        rate, per_cpu_second = total / run["wall_s"] / 1e9, total / run["cpu_s"] / 1e9
        return {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "precision": dtype,
                "load_average": run["load_average"],
                "gflop_forward": forward / 1e9, "gflop_backward": backward / 1e9,
                "gflop": total / 1e9, "gflop_per_s": rate, "fraction_of_peak": rate / peak[dtype],
                "gflop_per_cpu_s": per_cpu_second,
                "fraction_of_core_peak": per_cpu_second / (peak[dtype] / peak["threads"]),
                "phases_s": run["phases_s"]}
    result = {"recipe": recipe, "gemm_peak_gflop_per_s": peak,
              "official": program(official, "fp32"), "ours": program(ours, ours_dtype)}
    o, m = result["official"], result["ours"]
    result["ratios"] = {"wall": o["wall_s"] / m["wall_s"], "cpu": o["cpu_s"] / m["cpu_s"],
                        "work": o["gflop"] / m["gflop"]}
    result["targets"] = {
        "ours_at_least_70_percent_of_peak": m["fraction_of_peak"] >= 0.7,
        "cpu_ratio_at_least_work_ratio": result["ratios"]["cpu"] >= result["ratios"]["work"]}
    return result


def machine() -> dict:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "bf16_speedup_measured": cpu_bf16_speedup()}


# --- the report ----------------------------------------------------------------------------------
def _mark(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def format_report(report: dict) -> str:
    """The report as the text table the command prints."""
    m = report["machine"]
    lines = [f"compare-official: {report['official_dir']}",
             f"model {report['model']}, weights: {report['weights']}",
             f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}; both programs "
             "in fp32 for scores and training", ""]
    if "scoring" in report:
        lines += _scoring_lines(report)
    if "training" in report:
        lines += _training_lines(report["training"])
    if "speed" in report:
        lines += _speed_lines(report["speed"])
    lines += ["", f"overall: {_mark(report['passed'])} (scores, losses and training; "
              f"{report['seconds']:.0f} s)"]
    return "\n".join(_wrapped(line) for line in lines)


def _wrapped(line: str, width: int = 96) -> str:
    """A long line folded at ``width``, its continuation indented under it."""
    line = line.rstrip()
    if len(line) <= width:
        return line
    indent = " " * (len(line) - len(line.lstrip()) + 4)
    return "\n".join(textwrap.wrap(line, width, subsequent_indent=indent))


def _scoring_lines(report: dict) -> list[str]:
    lines = [f"scoring, untrained adapters (the official initialisation, seed "
             f"{report['init_seed']}), paper protocol, k = {report['shots']}",
             f"  {'protocol':<24}{'scores':<7}{'Pearson':>10}{'max |diff|':>12}"
             f"{'AUROC official':>16}{'AUROC ours':>12}{'|dAUROC|':>10}"]
    for key, entry in report["scoring"].items():
        name = f"{'segmentation' if key == 'Brain' else 'classification'} ({key})"
        for part in ("image", "pixel"):
            if part in entry:
                p = entry[part]
                lines.append(f"  {name if part == 'image' else '':<24}{part:<7}"
                             f"{p['pearson']:>10.6f}{p['max_abs_diff']:>12.2e}"
                             f"{p['auroc_official']:>16.6f}{p['auroc_ours']:>12.6f}"
                             f"{p['auroc_diff']:>10.1e}")
        lines.append(f"  {'':<24}text features max |diff| {entry['text_max_abs_diff']:.1e}, "
                     f"{entry['test_images']} test images: {_mark(entry['passed'])}")
    losses = report["losses"]
    lines.append(f"  losses on fixed inputs (official vs ours): focal "
                 f"{losses['focal']['official']:.7f} vs {losses['focal']['ours']:.7f}, dice "
                 f"{losses['dice']['official']:.7f} vs {losses['dice']['ours']:.7f}: "
                 f"{_mark(losses['passed'])}")
    return lines


def _training_lines(t: dict) -> list[str]:
    lines = ["", f"training: one epoch at batch 1, mvfa-lite given the official run's "
             f"initialisation and data order ({t['official_steps']} official steps)"]
    if not t["order_reproduced"]:
        return lines + [f"  order not reproduced: {t['reason']}: FAIL"]
    o, y = t["step_losses"], t["rounding_yardstick"]
    rows = [("steps", t["official_steps"], t["ours_steps"]),
            (f"loss, first {EXACT_STEPS} steps max |diff|",
             f"{o['first_steps_max_abs_diff']:.1e}", f"{y['first_steps_max_abs_diff']:.1e}"),
            ("first step differing > 1e-4", o["first_step_over_1e-4"], y["first_step_over_1e-4"]),
            ("loss per step median |diff|", f"{o['median_abs_diff']:.2e}",
             f"{y['median_abs_diff']:.2e}"),
            ("loss per step max |diff|", f"{o['max_abs_diff']:.2e}", f"{y['max_abs_diff']:.2e}"),
            ("loss per step Pearson", f"{o['pearson']:.6f}", f"{y['pearson']:.6f}"),
            ("adapters after, max |diff|", f"{t['adapters_max_abs_diff']:.2e}",
             f"{t['yardstick_adapters_max_abs_diff']:.2e}"),
            ("adapters after, gap / update", f"{t['adapters_relative_diff']:.1%}",
             f"{t['yardstick_adapters_relative_diff']:.1%}")]
    lines.append(f"  {'':<32}{'official vs ours':>18}{'ours vs ours+1ulp':>19}")
    lines += [f"  {name:<32}{str(a):>18}{str(b):>19}" for name, a, b in rows]
    lines += [f"  AUROC after the epoch, {part}: official {a:.4f}, ours {b:.4f}, ours+1ulp {c:.4f}"
              for part, (a, b, c) in t["auroc_after_epoch"].items()]
    return lines + [
        f"  first {EXACT_STEPS} steps within {STEP_TOLERANCE:g}, median |diff| within "
        f"{ROUNDING_FACTOR:g}x the one-ulp yardstick: {_mark(t['passed'])}"]


def _speed_lines(s: dict) -> list[str]:
    peak = s["gemm_peak_gflop_per_s"]
    o, ours, r = s["official"], s["ours"], s["ratios"]
    lines = ["", f"speed: {s['recipe']}",
             "  GEMM peak measured in this run: " + ", ".join(
                 f"{name} {value:.0f} GFLOP/s" for name, value in peak.items()
                 if name != "threads") + f" ({peak['threads']} threads)",
             f"  {'':<24}{'official':>12}{'mvfa-lite':>12}{'ratio':>8}"]
    rows = [("precision", o["precision"], ours["precision"], ""),
            ("wall seconds", f"{o['wall_s']:.1f}", f"{ours['wall_s']:.1f}", f"{r['wall']:.2f}x"),
            ("CPU seconds", f"{o['cpu_s']:.1f}", f"{ours['cpu_s']:.1f}", f"{r['cpu']:.2f}x"),
            ("GFLOP forward", f"{o['gflop_forward']:.0f}", f"{ours['gflop_forward']:.0f}", ""),
            ("GFLOP backward", f"{o['gflop_backward']:.0f}", f"{ours['gflop_backward']:.0f}", ""),
            ("GFLOP total (work)", f"{o['gflop']:.0f}", f"{ours['gflop']:.0f}",
             f"{r['work']:.2f}x"),
            ("GFLOP/s (wall)", f"{o['gflop_per_s']:.1f}", f"{ours['gflop_per_s']:.1f}", ""),
            ("  of the GEMM peak", f"{o['fraction_of_peak']:.0%}",
             f"{ours['fraction_of_peak']:.0%}", ""),
            ("GFLOP per CPU second", f"{o['gflop_per_cpu_s']:.1f}",
             f"{ours['gflop_per_cpu_s']:.1f}", ""),
            ("  of one core's peak", f"{o['fraction_of_core_peak']:.0%}",
             f"{ours['fraction_of_core_peak']:.0%}", ""),
            ("load average before/after", "/".join(f"{x:.1f}" for x in o["load_average"]),
             "/".join(f"{x:.1f}" for x in ours["load_average"]), "")]
    lines += [f"  {a:<24}{b:>12}{c:>12}{d:>8}" for a, b, c, d in rows]
    for name, program in (("official", o), ("mvfa-lite", ours)):
        phases = ", ".join(f"{k.split(':')[1]} {v:.1f} s" for k, v in program["phases_s"].items())
        lines.append(f"  {name} phases: {phases}")
    targets = s["targets"]
    lines.append(f"  targets: mvfa-lite at >= 70% of the GEMM peak: "
                 f"{'met' if targets['ours_at_least_70_percent_of_peak'] else 'not met'}; "
                 f"CPU-seconds ratio >= work ratio: "
                 f"{'met' if targets['cpu_ratio_at_least_work_ratio'] else 'not met'}")
    return lines


def default_datasets() -> dict:
    """The sets the command uses when none is given (they must be on this machine)."""
    return {"segmentation_data": catalogue.path("chestxray_synthlesion"),
            "classification_data": catalogue.path("chestxray_kermany224")}
