"""The ``mvfa-lite`` command: train, evaluate, predict, sweep, bench, compare-official.

Errors of the user's making (bad settings, folders, images, checkpoints, weights, output
folders) are printed as one message that says what to fix, without a traceback; exit status
2. Everything is checked before any training (see mvfa_lite.protocols.experiment). Warnings about
doubtful data (empty masks, NaN pixels) are printed as one line each.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

from ..config import PRECISIONS, PRESETS, PROTOCOLS, MVFAConfig
from ..data import catalogue
from ..errors import DataWarning, MVFAError
from ..method.prompts import PROMPT_SETS

# `mvfa-lite bench` sizes: the full benchmark (3,715 = the BrainMRI test split) and --quick
BENCH_SIZES = dict(batch_size=64, train_batch=32, epochs=50, test_images=3715,
                   zero_shot_images=20000)
BENCH_QUICK = dict(batch_size=16, train_batch=16, epochs=1, test_images=32, zero_shot_images=64)


def _at_least(low: int):
    """argparse type: a whole number >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; it must be >= {low}")
        return value
    return parse


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                       help="starting settings (default: paper); options below override them")
    group.add_argument("--protocol", choices=list(PROTOCOLS),
                       help="paper = the official run (batch 1); paper-b16 = the same at "
                       "the batch 16 quoted for the paper; corrected = the official code's "
                       "bugs fixed")
    group.add_argument("--model", dest="model_name",
                       help="open_clip ViT name (default ViT-L-14-336; tiny-random for smoke tests)")
    group.add_argument("--pretrained", help="open_clip pretrained tag (default openai) or 'random'")
    group.add_argument("--clip-checkpoint", help="CLIP weights file (or set MVFA_CLIP_CHECKPOINT)")
    group.add_argument("--image-size", type=int)
    group.add_argument("--levels", type=int, nargs="+", help="blocks after which adapters sit")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    group.add_argument("--precision", choices=PRECISIONS,
                       help="auto (default): bf16 on GPUs that have it, fp16 on T4/V100, on a "
                       "CPU the faster of bf16 and fp32 as measured")


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
    fields = ("protocol", "model_name", "pretrained", "image_size", "levels", "device", "precision",
              "epochs", "batch_size", "shots", "seed", "lr", "zero_shot_lr", "beta", "mix",
              "prompts", "normal_only", "augment")
    changes = {name: getattr(args, name) for name in fields
               if getattr(args, name, None) is not None}
    return MVFAConfig(**{**PRESETS[args.preset], **changes})


ALLOW_OTHER_WEIGHTS = ("load the adapters even into other CLIP weights than they were trained "
                       "with (a loud warning; the numbers then do not measure the trained model)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvfa-lite", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="few-shot or leave-one-dataset-out training",
                                description="Train the adapters, then evaluate on the test split. "
                                "Writes adapters.pth, metrics.json and scores.csv to --out.")
    train.add_argument("root", help="dataset folder in the BMAD layout (e.g. data/Brain_AD) or a "
                       "shipped set's name (chestxray_synthlesion, chestxray_kermany224)")
    train.add_argument("--setting", choices=["few-shot", "zero-shot"], default="few-shot")
    train.add_argument("--support-split",
                       help="few-shot: split the shots come from (default valid; a shipped "
                       "set's own)")
    train.add_argument("--test-split", help="default test (a shipped set's own)")
    train.add_argument("--seed-file", help="few-shot: official k-shot.txt file listing the shots")
    train.add_argument("--iterate", type=_at_least(0), default=0,
                       help="draw index in the seed file")
    train.add_argument("--sources", nargs="+", default=[],
                       help="zero-shot: the other datasets' folders (or names) to train on")
    train.add_argument("--source-split", default="test",
                       help="zero-shot: split of the sources to train on (official: test)")
    train.add_argument("--out", default="runs/latest", help="output folder")
    train.add_argument("--save-maps", action="store_true", help="also write maps.npz")
    _add_model_options(train)
    _add_training_options(train)

    evaluate = commands.add_parser("evaluate", help="score a labelled split with trained adapters",
                                   description="Evaluate a checkpoint on a BMAD-layout split.")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("root", help="dataset folder or a shipped set's name")
    evaluate.add_argument("--split", help="default test (a shipped set's own)")
    evaluate.add_argument("--clip-checkpoint")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--zero-shot-only", action="store_true",
                          help="ignore the few-shot memory bank")
    evaluate.add_argument("--allow-other-weights", action="store_true", help=ALLOW_OTHER_WEIGHTS)
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
    predict.add_argument("--allow-other-weights", action="store_true", help=ALLOW_OTHER_WEIGHTS)
    sweep = commands.add_parser("sweep", help="run a notebook over a parameter grid (papermill)",
                                description="Execute a notebook for every cell of a YAML grid, "
                                "here, on SLURM (submitit) or on Ray; finished cells (result.json "
                                "written with the same parameters) are skipped, so a killed or "
                                "re-submitted sweep resumes where it stopped. Grid format: see "
                                "mvfa_lite/sweep.py or sweeps/*.yaml.")
    sweep.add_argument("grid", help="YAML grid file")
    sweep.add_argument("--dry-run", action="store_true", help="list the cells still to do")
    sweep.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    sweep.add_argument("--force", action="store_true", help="run again finished cells whose "
                       "recorded parameters differ from the grid's (refused otherwise)")
    sweep.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                       help="local: one cell after another here; slurm: a submitit job array "
                       "(pip install 'mvfa-lite[slurm]'); ray: Ray tasks ('mvfa-lite[ray]')")
    cluster = sweep.add_argument_group("cluster resources per cell (override the grid "
                                       "file's resources:)")
    cluster.add_argument("--gpus", type=int, help="without it or resources.gpus: slurm 0, ray 1 "
                         "where GPUs exist")
    cluster.add_argument("--cpus", type=int)
    cluster.add_argument("--mem-gb", type=float)
    cluster.add_argument("--timeout-min", type=int, help="slurm: the job's time limit")
    cluster.add_argument("--partition", help="slurm partition")
    cluster.add_argument("--submitit-cluster", choices=["slurm", "local"], default="slurm",
                         help="local: run the submitit jobs as processes on this machine")
    cluster.add_argument("--ray-address", help="auto, ray://head:10001, or none: $RAY_ADDRESS "
                         "if set, else a Ray runtime started here for the sweep")
    bench = commands.add_parser("bench", help="speed of every stage on this device",
                                description="Measure forward, training-step and scoring "
                                "throughput, the end-to-end few-shot protocol and one zero-shot "
                                "epoch, with random weights and generated images (speed does "
                                "not depend on either). Writes a JSON file.")
    bench.add_argument("--model", dest="model_name", default="ViT-L-14-336")
    bench.add_argument("--image-size", type=int, default=240)
    bench.add_argument("--device", default="auto")
    for option, default in BENCH_SIZES.items():
        bench.add_argument(f"--{option.replace('_', '-')}", type=_at_least(1),
                           help=f"default {default}; with --quick {BENCH_QUICK[option]}")
    bench.add_argument("--shots", type=int, default=4)
    bench.add_argument("--repeats", type=_at_least(1), default=3)
    bench.add_argument("--quick", action="store_true",
                       help="CPU-sized defaults: one epoch of the k = 4 recipe on a small set "
                       "(the options given still apply)")
    bench.add_argument("--baseline", action="store_true",
                       help="also time a batch-1 per-image loop like the official code's")
    bench.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    bench.add_argument("--protocol", choices=list(PROTOCOLS), default="paper")
    bench.add_argument("--precision", choices=PRECISIONS, default="auto")
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
                         "(a folder or a shipped set's name; default: chestxray_synthlesion)")
    compare.add_argument("--classification-data", help="set without masks, run as 'Chest' "
                         "(default: the shipped chest X-rays)")
    compare.add_argument("--split", help="the split of both sets to use (default: each set's "
                         "test split)")
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
    show_others = warnings.showwarning

    def one_line(message, category, *where):
        if not issubclass(category, DataWarning):
            return show_others(message, category, *where)
        print(f"mvfa-lite {args.command}: warning: {message}", file=sys.stderr)

    try:
        commands = {"train": _train, "evaluate": _evaluate, "predict": _predict,
                    "sweep": _sweep, "bench": _bench,
                    "compare-official": _compare_official}
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = one_line
            return commands[args.command](args)
    except (MVFAError, ValueError) as error:
        print(f"mvfa-lite {args.command}: error: {error}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from ..protocols.experiment import run_few_shot, run_zero_shot
    config = _config(args)
    root = catalogue.path(args.root)
    support_split, test_split = catalogue.splits(args.root)
    support_split, test_split = args.support_split or support_split, args.test_split or test_split
    if args.setting == "few-shot":
        run = run_few_shot(config, root, support_split=support_split,
                           test_split=test_split, seed_file=args.seed_file,
                           iterate=args.iterate, out=args.out,
                           clip_checkpoint=args.clip_checkpoint, save_maps=args.save_maps)
    else:
        if not args.sources:
            raise ValueError("zero-shot training needs --sources: the other datasets' folders")
        sources = [catalogue.path(source) for source in args.sources]
        run = run_zero_shot(config, root, sources, source_split=args.source_split,
                            test_split=test_split, out=args.out,
                            clip_checkpoint=args.clip_checkpoint, save_maps=args.save_maps)
    _report(run.summary["weights"], run.metrics, args.out)
    return 0


def _evaluate(args) -> int:
    from ..data.layout import ADDataset
    from ..method.prompts import object_name
    from ..outputs import EVALUATE_FILES, OutputFolder, write_json
    from ..protocols.evaluate import compute_metrics, save_scores, score_dataset
    from ..protocols.experiment import load_trained, smallest_side, weights_banner
    from ..protocols.metrics import pixel_metrics_absent
    output = OutputFolder(args.out, "evaluate", EVALUATE_FILES,
                          inputs=[catalogue.path(args.root)]) if args.out else None
    model, bank, payload = load_trained(args.checkpoint, args.clip_checkpoint, args.device,
                                        with_bank=not args.zero_shot_only,
                                        allow_other_weights=args.allow_other_weights)
    print(weights_banner(model))
    split = args.split or catalogue.splits(args.root)[1]
    test = ADDataset(catalogue.path(args.root), split, model.config.image_size)
    test.require_both_classes().check(smallest_side(model.config))
    text = model.text_features(object_name(test.name))
    scores = score_dataset(model, test, text, bank, description=f"testing {test.name}")
    metrics = compute_metrics(scores)
    if output is not None:
        summary = dict(metrics=metrics, pixel_metrics_absent=pixel_metrics_absent(scores.masks),
                       weights=weights_banner(model), dataset=test.name,
                       checkpoint=str(args.checkpoint),
                       weights_warning=payload.get("weights_warning"))
        with output.writing() as folder:
            save_scores(scores, folder, maps=args.save_maps)
            write_json(folder / "metrics.json", summary)
    _report(weights_banner(model), metrics, args.out)
    return 0


def _predict(args) -> int:
    from ..data.images import overlay
    from ..data.layout import ImageFolder
    from ..method.prompts import object_name
    from ..outputs import PREDICT_FILES, OutputFolder
    from ..protocols.evaluate import score_dataset
    from ..protocols.experiment import load_trained, smallest_side, weights_banner
    output = OutputFolder(args.out, "predict", PREDICT_FILES, inputs=[args.images])
    model, bank, payload = load_trained(args.checkpoint, args.clip_checkpoint, args.device,
                                        allow_other_weights=args.allow_other_weights)
    print(weights_banner(model))
    images = ImageFolder(args.images, model.config.image_size, exclude=[output.path])
    images.check(smallest_side(model.config))
    text = model.text_features(args.object or object_name(payload.get("dataset", "")))
    scores = score_dataset(model, images, text, bank, has_masks=False, description="predicting")
    with output.writing() as folder, open(folder / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "overlay"])
        for i, path in enumerate(scores.paths):
            picture = folder / f"{i:05d}_{Path(path).stem}.png"
            overlay(images[i]["image"], scores.maps[i]).save(picture)
            writer.writerow([path, f"{float(scores.image_scores[i]):.6g}", picture.name])
    print(f"{len(scores.paths)} overlays and scores.csv written to {output.path}")
    return 0


def _sweep(args) -> int:
    from .sweep import run_sweep
    options = {"local": {}, "slurm": {"cluster": args.submitit_cluster},
               "ray": {"address": args.ray_address}}[args.executor]
    resources = dict(gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem_gb,
                     timeout_min=args.timeout_min, partition=args.partition)
    report = run_sweep(args.grid, executor=args.executor, dry_run=args.dry_run,
                       kernel=args.kernel, force=args.force, resources=resources, **options)
    return 1 if report.failed else 0


def bench_sizes(args) -> dict:
    """The sizes given on the command line; the others from --quick's or the full defaults."""
    defaults = BENCH_QUICK if args.quick else BENCH_SIZES
    return {option: getattr(args, option) or default for option, default in defaults.items()}


def _bench(args) -> int:
    from ..outputs import write_json
    from .bench import format_table, run_benchmark
    sizes = bench_sizes(args)
    epochs = sizes.pop("epochs")
    config = MVFAConfig(model_name=args.model_name, pretrained="random",
                        image_size=args.image_size, device=args.device, shots=args.shots,
                        epochs=epochs, protocol=args.protocol,
                        precision=args.precision)
    result = run_benchmark(config, repeats=args.repeats, baseline=args.baseline,
                           compile=args.compile, **sizes)
    result["command"] = "mvfa-lite " + " ".join(sys.argv[1:]) if sys.argv[0].endswith(
        "mvfa-lite") else None
    write_json(args.out, result)
    print(format_table(result))
    print(f"written to {args.out}")
    return 0


def _compare_official(args) -> int:
    from ..outputs import write_json
    from .compare.comparison import compare_official, default_datasets, format_report
    defaults = default_datasets()
    data = {name: catalogue.path(given) if given else defaults[name] for name, given in
            (("segmentation_data", args.segmentation_data),
             ("classification_data", args.classification_data))}
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
