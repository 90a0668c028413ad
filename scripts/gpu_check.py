"""The figures of scripts/gpu_check.sh: each call reads what one step wrote, prints its figures
and merges them into the summary JSON at once, so that a run cut off keeps what it measured.

    python3 scripts/gpu_check.py SUMMARY.json COMMAND ARGS...

COMMAND is one of the functions below (environment, step, pytest, train, agreement, bench,
official); ``targets`` in the summary holds each of the issue's targets that a step measured.
"""
from __future__ import annotations

import csv
import inspect
import json
import math
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

# the full few-shot protocol the one-epoch runs are projected to (BMAD Brain's test split)
EPOCHS, TEST_IMAGES = 50, 3715


def environment(summary: dict, smi_file: str) -> None:
    import torch
    cuda = torch.cuda.is_available()
    summary["environment"] = found = {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "nvidia_smi": Path(smi_file).read_text().strip() if Path(smi_file).is_file() else None}
    print(f"torch {found['torch']} (CUDA {found['cuda']}), device {found['device']}")


def step(summary: dict, name: str, status: str, seconds: str) -> None:
    """How one command ended: its exit status (124 or 137: it ran past its time budget), or
    "skipped" (its stage had no time left)."""
    rc = None if status == "skipped" else int(status)
    summary["steps"][name] = {"rc": rc, "seconds": round(float(seconds), 1),
                              "timed_out": rc in (124, 137), "skipped": rc is None}
    ending = "skipped: no time left in its stage" if rc is None else f"exit {rc}" + (
        " (timed out)" if rc in (124, 137) else "")
    print(f"step {name}: {ending}, {float(seconds):.1f} s")


def pytest(summary: dict, junit_xml: str) -> None:
    suite = ElementTree.parse(junit_xml).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary["pytest"] = counts
    print("pytest: " + ", ".join(f"{value} {key}" for key, value in counts.items()))


def train(summary: dict, label: str, folder: str) -> None:
    """A `mvfa-lite train` run: per-epoch losses finite and falling, AUROC, seconds."""
    result = json.loads((Path(folder) / "metrics.json").read_text())
    losses = [epoch["loss"] for epoch in result["history"]]
    metrics = result["metrics"]
    summary["train"][label] = row = {
        "model": result["backbone"]["model_name"], "precision": result["precision"],
        "losses": losses, "finite": all(math.isfinite(v) for v in losses),
        "falling": losses[-1] < losses[0], "best_epoch": result["best_epoch"],
        "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics.get("pixel_auroc"),
        "train_seconds": result["train_seconds"]}
    print(f"train {label}: {row['model']} {row['precision']}, loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f} (finite {row['finite']}, falling {row['falling']}), image AUROC "
          f"{row['image_auroc']:.4f}, {row['train_seconds']:.1f} s")


def _scores(folder: str) -> dict:
    with open(Path(folder) / "scores.csv") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


def agreement(summary: dict, reference: str, *runs: str) -> None:
    """Each run's image scores against the reference run's (the CPU's), image by image."""
    base = _scores(reference)
    base_metrics = json.loads((Path(reference) / "metrics.json").read_text())["metrics"]
    for folder in runs:
        scores = _scores(folder)
        paths = sorted(base)
        if sorted(scores) != paths:
            raise SystemExit(f"gpu_check.py: {folder} scored other images than {reference}")
        metrics = json.loads((Path(folder) / "metrics.json").read_text())["metrics"]
        row = {"pearson": float(np.corrcoef([base[p] for p in paths],
                                            [scores[p] for p in paths])[0, 1]),
               "max_abs_diff": max(abs(base[p] - scores[p]) for p in paths),
               "image_auroc_diff": abs(metrics["image_auroc"] - base_metrics["image_auroc"]),
               "pixel_auroc_diff": abs(metrics["pixel_auroc"] - base_metrics["pixel_auroc"])}
        label = Path(folder).name
        summary["agreement"][label] = row
        print(f"agreement {label} vs {Path(reference).name}: Pearson {row['pearson']:.6f}, "
              f"max |diff| {row['max_abs_diff']:.2e}, |dAUROC| image "
              f"{row['image_auroc_diff']:.1e}, pixel {row['pixel_auroc_diff']:.1e}")
        if label.endswith("fp32"):
            _target(summary, f"scores {label} = the CPU's: Pearson >= 0.999", row["pearson"],
                    row["pearson"] >= 0.999)


def bench(summary: dict, label: str, bench_json: str, all_json: str) -> None:
    """One `mvfa-lite bench` run; its whole JSON is kept in ``all_json`` under ``label``."""
    result = json.loads(Path(bench_json).read_text())
    everything = json.loads(Path(all_json).read_text()) if Path(all_json).is_file() else {}
    everything[label] = result
    Path(all_json).write_text(json.dumps(everything, indent=1))
    stages = result["stages"]
    row = {"precision": result["precision"], "compile": result["compile"],
           "forward_batch": stages["forward"]["batch"],
           "forward_images_per_s": stages["forward"]["images_per_s"],
           "train_batch": stages["train_step"]["batch"],
           "train_images_per_s": stages["train_step"]["images_per_s"],
           "train_peak_memory_gib": stages["train_step"].get("peak_memory_gib"),
           "scoring_images_per_s": stages["fewshot_scoring"]["images_per_s"],
           "end_to_end_seconds": stages["end_to_end"]["total_seconds"]}
    summary["bench"][label] = row
    memory = row["train_peak_memory_gib"]
    print(f"bench {label}: forward {row['forward_images_per_s']:.1f} images/s (batch "
          f"{row['forward_batch']}), training step {row['train_images_per_s']:.1f} images/s "
          f"(batch {row['train_batch']}, peak memory "
          f"{'n/a' if memory is None else f'{memory:.2f} GiB'}), scoring "
          f"{row['scoring_images_per_s']:.1f} images/s")
    bf16 = [r["forward_images_per_s"] for r in summary["bench"].values()
            if r["precision"] == "bf16" and not r["compile"]]
    if bf16:
        _target(summary, "forward bf16, best batch (eager) >= 2000 images/s", max(bf16),
                max(bf16) >= 2000)
    if memory is not None and row["train_batch"] == 32:
        _target(summary, "training step at batch 32: peak memory < 16 GB",
                memory * 2**30 / 1e9, memory * 2**30 < 16e9)


def official(summary: dict, compare_json: str, corrected_folder: str, profile: str,
             wall: str) -> None:
    """compare-official's speed part (the official code and mvfa-lite `paper`, one epoch at
    batch 1) and the timed `corrected` run beside it, then the projection of each to the full
    protocol from the per-image rates those runs measured."""
    from mvfa_lite.data.shots import AUGMENTATIONS_PER_SHOT
    from mvfa_lite.protocols.evaluate import score_dataset
    from mvfa_lite.tools.compare.staging import OURS_PHASES, phase_name, phase_seconds
    report = json.loads(Path(compare_json).read_text())
    speed = report["speed"]
    if speed.get("measured") is False:       # the official order was not matched: no FLOP
        summary["official"] = {"measured": False, "reason": speed["reason"]}
        print(f"official: speed not measured: {speed['reason']}")
        return
    test_images = len(_scores(corrected_folder))
    o, paper = speed["official"], speed["ours"]
    epochs = len(json.loads((Path(corrected_folder) / "metrics.json").read_text())["history"])
    corrected = {"wall_s": float(wall), "epochs": epochs, "phases_s": phase_seconds(
        Path(profile), (*OURS_PHASES, phase_name(inspect.unwrap(score_dataset))))}
    runs = {"official": (o, _official_rates(o, test_images)),
            "paper": (paper, _paper_rates(paper, test_images)),
            "corrected": (corrected, _corrected_rates(corrected, test_images))}
    projection = {name: rates["fixed_s"] + EPOCHS * (rates["epoch_train_s"] + rates.get(
        "per_epoch_test_image_s", 0) * TEST_IMAGES) + rates.get("test_image_s", 0) * TEST_IMAGES
        for name, (_, rates) in runs.items()}
    summary["official"] = {
        "measured": {"recipe": speed["recipe"], "test_images": test_images,
                     "training_passed": report["training"]["passed"],
                     **{f"{name}_wall_s": run["wall_s"] for name, (run, _) in runs.items()},
                     "precision": {"official": o["precision"], "ours": paper["precision"]}},
        "rates": {name: rates for name, (_, rates) in runs.items()},
        "projection": {
            "what": f"a PROJECTION, not a measurement: {EPOCHS} epochs of "
                    f"{2 * AUGMENTATIONS_PER_SHOT * report['shots']} augmented shots and {TEST_IMAGES} test images "
                    "(as BMAD Brain), from the per-epoch and per-image seconds of the runs "
                    "above (one epoch each, corrected a few; the first epoch's warm-up counted "
                    "as if every epoch paid it)",
            **{f"{name}_s": seconds for name, seconds in projection.items()},
            "paper_speedup": projection["official"] / projection["paper"],
            "corrected_speedup": projection["official"] / projection["corrected"]}}
    for name, (run, _) in runs.items():
        print(f"one epoch ({test_images} test images), {name}: {run['wall_s']:.1f} s wall")
    p = summary["official"]["projection"]
    print(f"PROJECTION to the full protocol: official {p['official_s']:.0f} s, mvfa-lite paper "
          f"{p['paper_s']:.0f} s ({p['paper_speedup']:.1f}x), corrected {p['corrected_s']:.0f} s "
          f"({p['corrected_speedup']:.1f}x)")
    _target(summary, "paper protocol at batch 1 >= 80x the official wall time (projected)",
            p["paper_speedup"], p["paper_speedup"] >= 80)
    _target(summary, "corrected protocol >= 250x the official wall time (projected)",
            p["corrected_speedup"], p["corrected_speedup"] >= 250)


def _official_rates(run: dict, test_images: int) -> dict:
    """The official epoch: train_few.py's main = model + prompts + augmentation, then per
    epoch the 88 steps and the memory bank, and a test pass (its epoch selection)."""
    phases = {key.split(":")[1]: value for key, value in run["phases_s"].items()}
    train = phases["main"] - phases["create_model"] - phases[
        "encode_text_with_prompt_ensemble"] - phases["augment"] - phases["test"]
    return {"fixed_s": run["wall_s"] - train - phases["test"], "epoch_train_s": train,
            "per_epoch_test_image_s": phases["test"] / test_images}


def _paper_rates(run: dict, test_images: int) -> dict:
    """mvfa-lite `paper`: fit() holds the steps and, every epoch, the test-set selection (the
    test set's stems, computed once before, stay in the fixed part)."""
    phases = {key.split(":")[1]: value for key, value in run["phases_s"].items()}
    train = phases["fit"] - phases["select"]
    return {"fixed_s": run["wall_s"] - phases["fit"], "epoch_train_s": train,
            "per_epoch_test_image_s": phases["select"] / test_images}


def _corrected_rates(run: dict, test_images: int) -> dict:
    """mvfa-lite `corrected`: the steps (batch 16), then one test pass at the end."""
    phases = {key.split(":")[1]: value for key, value in run["phases_s"].items()}
    return {"fixed_s": run["wall_s"] - phases["fit"] - phases["score_dataset"],
            "epoch_train_s": phases["fit"] / run["epochs"],
            "test_image_s": phases["score_dataset"] / test_images}


def _target(summary: dict, name: str, value: float, met: bool) -> None:
    summary["targets"][name] = {"value": value, "met": bool(met)}
    print(f"target {name}: {value:.4g} -> {'met' if met else 'NOT met'}")


def main(argv: list[str]) -> None:
    path, command, *args = argv
    summary = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    for key in ("steps", "train", "agreement", "bench", "targets"):
        summary.setdefault(key, {})
    commands = {f.__name__: f for f in (environment, step, pytest, train, agreement, bench,
                                        official)}
    commands[command](summary, *args)
    Path(path).write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
