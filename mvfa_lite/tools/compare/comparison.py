"""``mvfa-lite compare-official``, the orchestration: the inputs staged once, then each part
(scoring, training, speed) run on both programs, its result kept so that ``--resume`` does not
redo it. See the package docstring and book/benchmarks.md for what each part compares."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from functools import cached_property
from pathlib import Path

import torch

from ...config import MVFAConfig
from ...data.layout import ADDataset
from ...data.shots import AUGMENTATIONS_PER_SHOT, ShotSet, normal_bank_images, shot_set
from ...errors import MVFAError
from ...method.backbone import TINY_MODEL
from ...method.prompts import object_name
from ...outputs import atomic_write
from ...protocols.evaluate import StemSet, build_memory_bank, score_dataset
from ...protocols.experiment import build_model, evaluate_checkpoint, few_shot_data
from ...protocols.train import Source, compute_stems, fit
from ...runtime import machine, resolve_precision
from ..bench import gemm_peak
from ..flops import FlopCount
from ..official import OFFICIAL_DATASETS
from .agreement import (
    CHECKPOINT_AUROC_TOLERANCE,
    CHECKPOINT_PEARSON,
    compare_losses,
    compare_scores,
    data_order,
    fixed_loss_inputs,
    official_scores,
    training_report,
)
from .report import speed_report
from .staging import (
    OFFICIAL_PHASES,
    OURS_PHASES,
    PROTOCOL_KEYS,
    adapter_state,
    banks_from_official,
    check_official,
    check_official_python,
    default_split,
    nudge_by_one_ulp,
    ours_env,
    run_observed,
    stage_code,
    stage_dataset,
    timed_run,
    write_clip_weights,
)

PARTS = ("scoring", "training", "speed", "checkpoint")
DEFAULT_PARTS = PARTS[:3]             # checkpoint: asked for (--parts checkpoint)


def compare_official(official_dir, *, official_python: str, segmentation_data=None,
                     classification_data=None, split: str | None = None, shots: int = 4,
                     model_name: str = "ViT-L-14-336", clip_checkpoint=None, init_seed: int = 123,
                     shot_seed: int = 0, parts=DEFAULT_PARTS, speed_precision: str = "fp32",
                     device: str = "cpu", work_dir=None, keep: bool = False,
                     resume: bool = False, say=print) -> dict:
    """Run both programs on the same inputs; returns the report (see :func:`.report.format_report`).

    ``segmentation_data`` / ``classification_data``: dataset folders (one split, ``split``,
    holding normal and abnormal images; masks for the first), staged as 'Brain' and 'Chest'.
    ``split=None``: each named set's test split, else the folder's only split.
    ``None`` skips that protocol. ``device``: "cpu" or "cuda", where both programs run (the
    official code takes ``cuda:0`` itself, in its fp16 autocast; on "cpu" it is shown no GPU).
    Training and speed run on the segmentation set (or the classification set when it is the
    only one); speed needs training (its FLOP counts).
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
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    sets = {key: ADDataset(root, split or default_split(Path(root))) for key, root in
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
                           clip_checkpoint, init_seed, shot_seed, device, work, say).run(
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
                 init_seed, shot_seed, device, work, say):
        self.started, self.say, self.work = time.perf_counter(), say, work
        self.device = device
        # the official code takes cuda:0 whenever it sees a GPU
        self.official_env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if device == "cpu" \
            else None
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
                with atomic_write(self.clip_file) as temporary:
                    write_clip_weights(model_name, temporary)
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
                                 pretrained="random" if self.tiny else "openai", device=device,
                                 shots=shots, epochs=1)
        self.step("building mvfa-lite's model")
        self.model = build_model(self.config, None if self.tiny else self.clip_file)
        levels = self.model.levels
        self.official_args = ["--shot", str(shots), "--iterate", "0", "--features_list",
                              *map(str, levels)]
        self.report = {
            "official_dir": str(official_dir), "model": model_name, "shots": shots,
            "init_seed": init_seed, "device": device, "machine": machine(),
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
        with atomic_write(self.done_file) as temporary:
            temporary.write_text(json.dumps(self.done))

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
        if "checkpoint" in parts:
            self.checkpoints()
        checks = [entry["passed"] for entry in self.report.get("scoring", {}).values()]
        checks += [self.report[name]["passed"] for name in ("losses", "training", "checkpoint")
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
                          losses=self.work / "loss-inputs.pt"), env=self.official_env)
            self.step(f"mvfa-lite scoring ({key}) ...")
            banks_from_official(self.model, torch.load(init_path, weights_only=True))
            shots, test = self.data(key)
            text = self.model.text_features(object_name(test.name))
            bank = build_memory_bank(self.model, normal_bank_images(shots))
            scores = score_dataset(self.model, test, text, bank, progress=False)
            entry = compare_scores(official_scores(record, test.has_masks),
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
            cwd=self.code, count_flops=True, env=self.official_env)
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
        model.clear_text_cache()                    # count the text features too
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

    def checkpoints(self) -> None:
        """:meth:`checkpoint` on every staged set; each finished set is kept for a resume."""
        sets = {}
        for key in self.roots:
            sets[key] = self.done.get(f"checkpoint-{key}") or self.checkpoint(key)
            self.finished(f"checkpoint-{key}", sets[key])
        self.report["checkpoint"] = {"sets": sets, "passed": all(s["passed"] for s in sets.values())}

    def checkpoint(self, key: str) -> dict:
        """The official train_few.py saves its .pth (one epoch); test_few.py scores it (and
        test_zero.py, as a zero-shot checkpoint, where the checkout has it); mvfa-lite's
        ``evaluate`` reads that file as it is and scores the same test set each way."""
        saved = "./ckpt/official-trained/"
        (self.code / saved).mkdir(parents=True, exist_ok=True)    # the official code does not
        for other in OFFICIAL_DATASETS:   # test_zero.py lists every dataset's test folders first
            for kind in ("good", "Ungood"):
                (self.code / "data" / f"{other}_AD" / "test" / kind / "img").mkdir(
                    parents=True, exist_ok=True)
        self.step(f"official training, checkpoint saved ({key}, train_few.py --epoch 1) ...")
        run_observed(self.python, ["train_few.py", "--obj", key, *self.official_args, "--epoch",
                                   "1", "--save_model", "1", "--save_path", saved],
                     self.work / f"official-checkpoint-{key}-train.pt",
                     self.work / "logs" / f"official-checkpoint-{key}-train.log", cwd=self.code)
        path, test = self.code / saved / f"{key}.pth", ADDataset(self.roots[key], "test")
        result = {"key": key, "file": str(path), "test_images": len(test)}
        scripts = {"few-shot": ["test_few.py", *self.official_args],
                   "zero-shot": ["test_zero.py", "--features_list", *map(str, self.model.levels)]}
        for setting, (script, *arguments) in scripts.items():
            if not (self.code / script).is_file():
                continue
            self.step(f"official scoring of that checkpoint ({key}, {script}) ...")
            name = f"official-checkpoint-{key}-{setting}"
            record = run_observed(self.python, [script, "--obj", key, *arguments, "--save_path",
                                                saved], self.work / f"{name}.pt",
                                  self.work / "logs" / f"{name}.log", cwd=self.code)
            self.step(f"mvfa-lite evaluate on the official .pth ({key}, {setting}) ...")
            run = evaluate_checkpoint(
                path, self.roots[key], split="test", device=self.device, progress=False,
                clip_checkpoint=None if self.tiny else self.clip_file,
                official=dict(setting=setting, seed_file=self.seed_file(key), shots=self.shots,
                              model_name=self.model_name, support_split="valid"))
            entry = compare_scores(official_scores(record, test.has_masks,
                                                   image_first=setting == "zero-shot"),
                                   record["test_paths"], run.scores, test.has_masks,
                                   marks=(CHECKPOINT_PEARSON, CHECKPOINT_AUROC_TOLERANCE))
            entry["passed"] = all(part["passed"] for part in entry.values())
            result[setting] = entry
        result["passed"] = all(result[s]["passed"] for s in scripts if s in result)
        return result

    def speed(self, key: str, precision: str) -> None:
        """The same epoch in each program, as its users run it, timed (both in one go)."""
        if "speed" in self.done:
            self.report["speed"] = self.done["speed"]
            return
        training = self.report["training"]
        if "ours_flops" not in training:    # the official order was not matched: nothing counted
            self.report["speed"] = {"measured": False, "reason": "mvfa-lite's FLOP were not "
                                    "counted: " + training.get("reason", "training failed")}
            return
        peak = gemm_peak() if self.device == "cpu" else None
        self.step("official training epoch, timed (train_few.py --epoch 1) ...")
        official = timed_run(
            [self.python, "train_few.py", "--obj", key, *self.official_args, "--epoch", "1",
             "--save_model", "0"], cwd=self.code, log=self.work / "logs" / "official-timed.log",
            phases=OFFICIAL_PHASES, env=self.official_env)
        self.step(f"mvfa-lite train, timed ({precision}) ...")
        ours = timed_run([sys.executable, "-m", "mvfa_lite", *self.train_arguments(
            key, precision)], cwd=self.work, log=self.work / "logs" / "ours-timed.log",
            phases=OURS_PHASES, env=ours_env())
        test_images = len(ADDataset(self.roots[key], "test"))
        augmented = 2 * AUGMENTATIONS_PER_SHOT * self.shots     # k normal + k abnormal shots
        self.report["speed"] = speed_report(
            {**official, "flops": training["official_flops"]},
            {**ours, "flops": training["ours_flops"]}, peak,
            {"official": "fp32" if self.device == "cpu" else "fp16",
             "ours": resolve_precision(precision, torch.device(self.device))},
            f"{key}, k = {self.shots}: one epoch of {augmented} augmented shots at batch 1, "
            f"then the memory bank and one test pass over {test_images} images (the official "
            "epoch selection)")
        self.finished("speed", self.report["speed"])

    def train_arguments(self, key: str, precision: str) -> list[str]:
        arguments = ["train", str(self.roots[key]), "--support-split", "valid", "--test-split",
                     "test", "--seed-file", str(self.seed_file(key)), "--shots", str(self.shots),
                     "--epochs", "1", "--protocol", "paper", "--device", self.device,
                     "--out", str(self.work / "ours-train")]
        if self.tiny:
            arguments += ["--model", TINY_MODEL, "--pretrained", "random"]
        else:
            arguments += ["--model", self.model_name, "--clip-checkpoint", str(self.clip_file)]
        return arguments + ["--precision", precision]
