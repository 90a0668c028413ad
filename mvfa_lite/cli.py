"""The ``mvfa-lite`` command: train, evaluate, predict, sweep, bench, compare-official.

Errors of the user's making (bad folders, images, checkpoints, weights) are printed as one
message that says what to fix, without a traceback; exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from .config import PRESETS, PROTOCOLS, MVFAConfig
from .errors import MVFAError
from .prompts import PROMPT_SETS


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                       help="starting settings (default: paper); options below override them")
    group.add_argument("--protocol", choices=list(PROTOCOLS),
                       help="paper = the official run (batch 1); paper-b16 = the same at the "
                       "paper's batch 16; corrected = the official code's bugs fixed")
    group.add_argument("--model", dest="model_name",
                       help="open_clip ViT name (default ViT-L-14-336; tiny-random for smoke tests)")
    group.add_argument("--pretrained", help="open_clip pretrained tag (default openai) or 'random'")
    group.add_argument("--clip-checkpoint", help="CLIP weights file (or set MVFA_CLIP_CHECKPOINT)")
    group.add_argument("--image-size", type=int)
    group.add_argument("--levels", type=int, nargs="+", help="blocks after which adapters sit")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    group.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                       help="run fp32 instead of bf16 autocast (used on GPUs and on CPUs with native bf16)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    for flag, kind, text in (
            ("--epochs", int, "default 50"),
            ("--batch-size", int, "default: the protocol's (paper 1, paper-b16 and corrected 16)"),
            ("--shots", int, "few-shot: k normal (+ k abnormal) images; default 4"),
            ("--seed", int, "default 111"), ("--lr", float, "few-shot learning rate (1e-3)"),
            ("--zero-shot-lr", float, "zero-shot learning rate (1e-4)"),
            ("--beta", float, "fusion weight of the zero-shot branch (0.5)")):
        group.add_argument(flag, type=kind, help=text)
    group.add_argument("--mix", type=float, nargs=3, metavar=("STREAM", "SEG", "DET"),
                       help="residual mix (0.8 0.1 0.1); 1 0 0 = independent projectors")
    group.add_argument("--prompts", choices=sorted(PROMPT_SETS),
                       help="prompt set (default: paper)")
    group.add_argument("--normal-only", action="store_true", default=None,
                       help="few-shot: train on the k normal shots only")
    group.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="few-shot: skip the official x11 augmentation of the shots")


def _config(args) -> MVFAConfig:
    fields = ("protocol", "model_name", "pretrained", "image_size", "levels", "device", "amp",
              "epochs", "batch_size", "shots", "seed", "lr", "zero_shot_lr", "beta", "mix",
              "prompts", "normal_only", "augment")
    changes = {name: getattr(args, name) for name in fields
               if getattr(args, name, None) is not None}
    return MVFAConfig(**{**PRESETS[args.preset], **changes})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvfa-lite", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="few-shot or leave-one-dataset-out training",
                                description="Train the adapters, then evaluate on the test split. "
                                "Writes adapters.pth, metrics.json and scores.csv to --out.")
    train.add_argument("root", help="dataset folder in the BMAD layout (e.g. data/Brain_AD)")
    train.add_argument("--setting", choices=["few-shot", "zero-shot"], default="few-shot")
    train.add_argument("--support-split", default="valid",
                       help="few-shot: split the shots come from (default valid)")
    train.add_argument("--test-split", default="test")
    train.add_argument("--seed-file", help="few-shot: official k-shot.txt file listing the shots")
    train.add_argument("--iterate", type=int, default=0, help="draw index in the seed file")
    train.add_argument("--sources", nargs="+", default=[],
                       help="zero-shot: the other datasets' folders to train on")
    train.add_argument("--source-split", default="test",
                       help="zero-shot: split of the sources to train on (official: test)")
    train.add_argument("--out", default="runs/latest", help="output folder")
    train.add_argument("--save-maps", action="store_true", help="also write maps.npz")
    _add_model_options(train)
    _add_training_options(train)

    evaluate = commands.add_parser("evaluate", help="score a labelled split with trained adapters",
                                   description="Evaluate a checkpoint on a BMAD-layout split.")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("root")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--clip-checkpoint")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--zero-shot-only", action="store_true",
                          help="ignore the few-shot memory bank")
    evaluate.add_argument("--out", help="write metrics.json and scores.csv here")
    evaluate.add_argument("--save-maps", action="store_true")

    predict = commands.add_parser("predict", help="heat maps and scores for a folder of images",
                                  description="Score unlabelled images: writes one overlay PNG "
                                  "per image and scores.csv. Scores and maps are min-max "
                                  "normalised over the folder, so score a batch, not one image.")
    predict.add_argument("checkpoint")
    predict.add_argument("images", help="a folder of images (searched recursively) or one image")
    predict.add_argument("--out", default="predictions")
    predict.add_argument("--object", help="object word for the prompts (default: the "
                         "checkpoint's dataset, e.g. 'Brain')")
    predict.add_argument("--clip-checkpoint")
    predict.add_argument("--device", default="auto")
    sweep = commands.add_parser("sweep", help="run a notebook over a parameter grid (papermill)",
                                description="Execute a notebook for every point of a YAML grid; "
                                "finished runs (those with result.json) are skipped, so a killed "
                                "sweep resumes where it stopped. Grid format: see "
                                "mvfa_lite/sweep.py or sweeps/*.yaml.")
    sweep.add_argument("grid", help="YAML grid file")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs still to do")
    sweep.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    bench = commands.add_parser("bench", help="speed of every stage on this device",
                                description="Measure forward, training-step and scoring "
                                "throughput, the end-to-end few-shot protocol and one zero-shot "
                                "epoch, with random weights and generated images (speed does "
                                "not depend on either). Writes a JSON file.")
    bench.add_argument("--model", dest="model_name", default="ViT-L-14-336")
    bench.add_argument("--image-size", type=int, default=240)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--batch-size", type=int, default=64, help="forward / scoring batch")
    bench.add_argument("--train-batch", type=int, default=32)
    bench.add_argument("--shots", type=int, default=4)
    bench.add_argument("--epochs", type=int, default=50)
    bench.add_argument("--test-images", type=int, default=3715, help="BrainMRI test split size")
    bench.add_argument("--zero-shot-images", type=int, default=20000)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--quick", action="store_true",
                       help="CPU-sized: 1 epoch, 32 test images, 64 zero-shot images, batch 16 "
                       "(the embedded BUSI recipe)")
    bench.add_argument("--baseline", action="store_true",
                       help="also time a batch-1 per-image loop like the official code's")
    bench.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    bench.add_argument("--protocol", choices=list(PROTOCOLS), default="paper")
    bench.add_argument("--no-amp", dest="amp", action="store_false")
    bench.add_argument("--out", default="bench.json")
    compare = commands.add_parser(
        "compare-official", help="run the official MVFA code beside mvfa-lite: scores, "
        "training, speed", description="Run the official code (a checkout of "
        "MediaBrain-SJTU/MVFA-AD, in its own Python) and mvfa-lite's paper protocol on the same "
        "CLIP weights, adapter initialisation and data: scoring on a set with masks (as "
        "'Brain') and one without (as 'Chest'), one training epoch at batch 1 in the official "
        "data order, and the speed of that epoch in each program. Prints a table and PASS or "
        "FAIL; writes a JSON report. The official code is copied and patched in a temporary "
        "folder, never in place.")
    compare.add_argument("official_dir", help="checkout of the official code")
    compare.add_argument("--official-python", default=sys.executable,
                         help="the Python that runs the official code (its venv, with kornia, "
                         "ftfy, scikit-learn); default: this one")
    compare.add_argument("--segmentation-data", help="set with masks, run as 'Brain' "
                         "(default: the embedded busi set)")
    compare.add_argument("--classification-data", help="set without masks, run as 'Chest' "
                         "(default: the shipped chest X-rays)")
    compare.add_argument("--split", default="embedded", help="the split of both sets to use")
    compare.add_argument("--shots", type=int, default=4)
    compare.add_argument("--model", dest="model_name", default="ViT-L-14-336",
                         help="the official code runs ViT-L-14-336 only")
    compare.add_argument("--clip-checkpoint", help="real CLIP weights (default: seeded random)")
    compare.add_argument("--parts", nargs="+", choices=["scoring", "training", "speed"],
                         default=["scoring", "training", "speed"],
                         help="what to compare (speed needs training); default: all")
    compare.add_argument("--speed-precision", choices=["fp32", "auto"], default="fp32",
                         help="mvfa-lite's precision in the timed run (the official code runs "
                         "fp32 on a CPU); auto = bf16 where measured faster")
    compare.add_argument("--work-dir", help="a new or empty folder to stage in, kept "
                         "(default: a temporary folder, removed at the end)")
    compare.add_argument("--keep", action="store_true", help="keep the temporary folder")
    compare.add_argument("--resume", action="store_true",
                         help="finish an interrupted run in --work-dir (same inputs)")
    compare.add_argument("--out", default="compare-official.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"train": _train, "evaluate": _evaluate, "predict": _predict,
                    "sweep": _sweep, "bench": _bench, "compare-official": _compare_official}
        return commands[args.command](args)
    except (MVFAError, ValueError) as error:
        print(f"mvfa-lite {args.command}: error: {error}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from .experiment import run_few_shot, run_zero_shot
    config = _config(args)
    if args.setting == "few-shot":
        run = run_few_shot(config, args.root, support_split=args.support_split,
                           test_split=args.test_split, seed_file=args.seed_file,
                           iterate=args.iterate, out=args.out,
                           clip_checkpoint=args.clip_checkpoint, save_maps=args.save_maps)
    else:
        if not args.sources:
            raise ValueError("zero-shot training needs --sources: the other datasets' folders")
        run = run_zero_shot(config, args.root, args.sources, source_split=args.source_split,
                            test_split=args.test_split, out=args.out,
                            clip_checkpoint=args.clip_checkpoint, save_maps=args.save_maps)
    _report(run.summary["weights"], run.metrics, args.out)
    return 0


def _evaluate(args) -> int:
    from .data import ADDataset
    from .evaluate import compute_metrics, save_scores, score_dataset
    from .experiment import load_trained, weights_banner
    from .results import write_json
    from .prompts import object_name
    model, bank, payload = load_trained(args.checkpoint, args.clip_checkpoint, args.device,
                                        with_bank=not args.zero_shot_only)
    print(weights_banner(model))
    test = ADDataset(args.root, args.split, model.config.image_size)
    text = model.text_features(object_name(test.name))
    scores = score_dataset(model, test, text, bank, description=f"testing {test.name}")
    metrics = compute_metrics(scores)
    if args.out:
        save_scores(scores, args.out, maps=args.save_maps)
        write_json(Path(args.out) / "metrics.json",
                    dict(metrics=metrics, weights=weights_banner(model), dataset=test.name,
                         checkpoint=str(args.checkpoint)))
    _report(weights_banner(model), metrics, args.out)
    return 0


def _predict(args) -> int:
    from .data import ImageFolder
    from .evaluate import score_dataset
    from .experiment import load_trained, weights_banner
    from .prompts import object_name
    from .viz import overlay
    model, bank, payload = load_trained(args.checkpoint, args.clip_checkpoint, args.device)
    print(weights_banner(model))
    images = ImageFolder(args.images, model.config.image_size)
    text = model.text_features(args.object or object_name(payload.get("dataset", "")))
    scores = score_dataset(model, images, text, bank, has_masks=False, description="predicting")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "overlay"])
        for i, path in enumerate(scores.paths):
            picture = out / f"{i:05d}_{Path(path).stem}.png"
            overlay(images[i]["image"], scores.maps[i]).save(picture)
            writer.writerow([path, f"{float(scores.image_scores[i]):.6g}", picture.name])
    print(f"{len(scores.paths)} overlays and scores.csv written to {out}")
    return 0


def _sweep(args) -> int:
    from .sweep import run_sweep
    outcome = run_sweep(args.grid, dry_run=args.dry_run, kernel=args.kernel)
    return 1 if outcome["failed"] else 0


def _bench(args) -> int:
    from .bench import format_table, run_benchmark
    from .results import write_json
    sizes = dict(batch_size=args.batch_size, train_batch=args.train_batch,
                 test_images=args.test_images, zero_shot_images=args.zero_shot_images)
    epochs = args.epochs
    if args.quick:
        sizes = dict(batch_size=16, train_batch=16, test_images=32, zero_shot_images=64)
        epochs = 1
    config = MVFAConfig(model_name=args.model_name, pretrained="random",
                        image_size=args.image_size, device=args.device, shots=args.shots,
                        epochs=epochs, protocol=args.protocol, amp=args.amp)
    result = run_benchmark(config, repeats=args.repeats, baseline=args.baseline,
                           compile=args.compile, **sizes)
    result["command"] = "mvfa-lite " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(
        "mvfa-lite") else None
    write_json(args.out, result)
    print(format_table(result))
    print(f"written to {args.out}")
    return 0


def _compare_official(args) -> int:
    from .official import compare_official, default_datasets, format_report
    from .results import write_json
    data = {"segmentation_data": args.segmentation_data,
            "classification_data": args.classification_data}
    if None in data.values():
        defaults = default_datasets()
        data = {name: value or defaults[name] for name, value in data.items()}
    report = compare_official(args.official_dir, official_python=args.official_python,
                              split=args.split, shots=args.shots, model_name=args.model_name,
                              clip_checkpoint=args.clip_checkpoint,
                              parts=args.parts, speed_precision=args.speed_precision,
                              work_dir=args.work_dir, resume=args.resume,
                              keep=args.keep, **data)
    report["command"] = "mvfa-lite compare-official " + " ".join(sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "compare-official" else None
    write_json(args.out, report)
    print(format_report(report))
    print(f"written to {args.out}")
    return 0 if report["passed"] else 1


def _report(weights: str, metrics: dict, out) -> None:
    print(weights)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=2))
    if out:
        print(f"results written to {out}")


if __name__ == "__main__":
    sys.exit(main())
