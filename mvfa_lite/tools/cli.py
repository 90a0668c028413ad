"""The ``mvfa-lite`` command: train, evaluate, predict, import-official, fetch-official, sweep,
bench, compare-official.

Errors of the user's making (bad settings, folders, images, checkpoints, weights, output
folders) are printed as one message that says what to fix, without a traceback; exit status
2. Everything is checked before any training (see mvfa_lite.protocols.experiment). Warnings
about doubtful data (empty masks, NaN pixels) are printed as one line each. The options of
the settings come from ``config.OPTIONS``; each command is an ``_add_<command>`` that builds
its options beside the handler that runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import yaml

from ..config import COMPILE_MODES, OPTIONS, PRECISIONS, PRESETS, PROTOCOLS, MVFAConfig
from ..data import catalogue
from ..errors import DataWarning, MVFAError
from ..method.prompts import PROMPT_SETS
from ..outputs import RESEARCH_ONLY
from .bench_command import add_bench, at_least
from .official import (
    add_fetch_official,
    add_import_official,
    add_official_options,
    official_options,
)

ALLOW_OTHER_WEIGHTS = ("load the adapters even into other CLIP weights than they were trained "
                       "with (a loud warning; the numbers then do not measure the trained model)")
CHOICES = {"protocol": list(PROTOCOLS), "precision": list(PRECISIONS),
           "compile": list(COMPILE_MODES),
           "prompts": sorted(PROMPT_SETS)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvfa-lite", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_predict, add_import_official,
                add_fetch_official, _add_sweep, add_bench, _add_compare_official):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_others = warnings.showwarning

    def one_line(message, category, *where):
        if not issubclass(category, DataWarning):
            return show_others(message, category, *where)
        print(f"mvfa-lite {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = one_line
            return args.handler(args)
    except (MVFAError, ValueError) as error:
        print(f"mvfa-lite {args.command}: error: {error}", file=sys.stderr)
        return 2


def _override(text: str) -> tuple[str, object]:
    """argparse type of --override: NAME=VALUE, the value read as YAML (false, det, null)."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. bank_includes_cls="
                                         "false)")
    return name, None if value in ("None", "none") else yaml.safe_load(value)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per MVFAConfig field, from config.OPTIONS (unset: the preset's value)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                        help="starting settings (default: paper); the options below override "
                        "them")
    parser.add_argument("--clip-checkpoint", help="CLIP weights file (or set "
                        "MVFA_CLIP_CHECKPOINT)")
    groups = {}
    for name, (group, flag, kind, text) in OPTIONS.items():
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        options = dict(dest=name, help=text)
        if kind == "true" or kind == "false":
            options.update(action="store_true" if kind == "true" else "store_false", default=None)
        elif kind == "choice":
            options.update(choices=CHOICES[name])
        elif kind == "override":
            options.update(type=_override, action="append", metavar="NAME=VALUE")
        elif isinstance(kind, tuple):
            _, kind, count = kind
            options.update(type=kind, nargs=count)
        else:
            options.update(type=kind)
        groups[group].add_argument(flag, **options)


def _config(args) -> MVFAConfig:
    changes = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    if "overrides" in changes:
        changes["overrides"] = dict(changes["overrides"])
    return MVFAConfig(**{**PRESETS[args.preset], **changes})


# --- train -----------------------------------------------------------------------------
def _add_train(commands) -> None:
    parser = commands.add_parser("train", help="few-shot or leave-one-dataset-out training",
                                description="Train the adapters, then evaluate on the test split. "
                                "Writes adapters.pth, metrics.json and scores.csv to --out.")
    parser.add_argument("root", help="dataset folder in the BMAD layout (e.g. data/Brain_AD) or a "
                        "shipped set's name (chestxray_synthlesion, chestxray_kermany224)")
    parser.add_argument("--setting", choices=["few-shot", "zero-shot"], default="few-shot")
    parser.add_argument("--support-split",
                        help="few-shot: split the shots come from (default valid; a shipped "
                        "set's own)")
    parser.add_argument("--test-split", help="default test (a shipped set's own)")
    parser.add_argument("--seed-file", help="few-shot: official k-shot.txt file listing the shots")
    parser.add_argument("--iterate", type=at_least(0), default=0,
                        help="draw index in the seed file")
    parser.add_argument("--sources", nargs="+", default=[],
                        help="zero-shot: the other datasets' folders (or names) to train on")
    parser.add_argument("--source-split", default="test",
                        help="zero-shot: split of the sources to train on (official: test)")
    parser.add_argument("--out", default="runs/latest", help="output folder")
    parser.add_argument("--save-maps", action="store_true", help="also write maps.npz")
    _add_config_options(parser)
    parser.set_defaults(handler=_train)


def _train(args) -> int:
    from ..protocols.experiment import preflight, run_few_shot, run_zero_shot
    config = preflight(_config(args))                  # the settings first, then the data
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


# --- evaluate and predict --------------------------------------------------------------
def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="score a labelled split with trained adapters",
                                   description="Evaluate a checkpoint on a BMAD-layout split.")
    parser.add_argument("checkpoint")
    parser.add_argument("root", help="dataset folder or a shipped set's name")
    parser.add_argument("--split", help="default test (a shipped set's own)")
    parser.add_argument("--zero-shot-only", action="store_true",
                        help="ignore the few-shot memory bank")
    parser.add_argument("--out", help="write metrics.json and scores.csv here")
    parser.add_argument("--save-maps", action="store_true")
    _add_checkpoint_options(parser)
    parser.set_defaults(handler=_evaluate)


def _add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """What evaluate and predict share: the weights beside the checkpoint, the device, and
    the options of an official MVFA .pth."""
    parser.add_argument("--clip-checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--allow-other-weights", action="store_true", help=ALLOW_OTHER_WEIGHTS)
    add_official_options(parser)


def _evaluate(args) -> int:
    from ..protocols.experiment import evaluate_checkpoint
    run = evaluate_checkpoint(args.checkpoint, args.root, split=args.split, out=args.out,
                              clip_checkpoint=args.clip_checkpoint, device=args.device,
                              zero_shot_only=args.zero_shot_only,
                              allow_other_weights=args.allow_other_weights,
                              save_maps=args.save_maps, official=official_options(args))
    _report(run.summary["weights"], run.metrics, args.out)
    return 0


def _add_predict(commands) -> None:
    parser = commands.add_parser("predict", help="heat maps and scores for a folder of images",
                                  description="Score unlabelled images: writes one overlay PNG "
                                  "per image and scores.csv. Scores are calibrated with the "
                                  "normalisation and F1-max threshold the checkpoint fixed on "
                                  "its test split at train time, so one image can be judged on "
                                  "its own; scores.csv says anomalous yes/no at that threshold. "
                                  + RESEARCH_ONLY)
    parser.add_argument("checkpoint")
    parser.add_argument("images", help="a folder of images (searched recursively) or one image")
    parser.add_argument("--out", default="predictions")
    parser.add_argument("--object", help="object word for the prompts (default: the "
                        "checkpoint's dataset, e.g. 'Brain')")
    _add_checkpoint_options(parser)
    parser.add_argument("--relative", action="store_true",
                        help="min-max normalise over the images given instead (scores relative "
                        "to each other; no yes/no)")
    parser.set_defaults(handler=_predict)


def _predict(args) -> int:
    from ..protocols.experiment import predict
    scores = predict(args.checkpoint, args.images, out=args.out, object_word=args.object,
                     clip_checkpoint=args.clip_checkpoint, device=args.device,
                     allow_other_weights=args.allow_other_weights, relative=args.relative,
                     official=official_options(args))
    print(f"{len(scores.paths)} overlays and scores.csv written to {args.out}")
    print(RESEARCH_ONLY)
    return 0


# --- sweep, bench, compare-official ----------------------------------------------------
def _add_sweep(commands) -> None:
    parser = commands.add_parser("sweep", help="run a notebook over a parameter grid (papermill)",
                                description="Execute a notebook for every cell of a YAML grid, "
                                "here, on SLURM (submitit) or on Ray; finished cells (result.json "
                                "written with the same parameters) are skipped, so a killed or "
                                "re-submitted sweep resumes where it stopped. Grid format: see "
                                "mvfa_lite/tools/sweep.py or sweeps/*.yaml.")
    parser.add_argument("grid", help="YAML grid file")
    parser.add_argument("--dry-run", action="store_true", help="list the cells still to do")
    parser.add_argument("--status", action="store_true", help="say where each cell stands "
                        "(finished, pending or running on SLURM, failed and why, to do) and "
                        "exit; submits nothing")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    parser.add_argument("--force", action="store_true", help="run again finished cells whose "
                        "recorded parameters differ from the grid's (refused otherwise)")
    parser.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                        help="local: one cell after another here; slurm: a submitit job array "
                        "(pip install 'mvfa-lite[slurm]'); ray: Ray tasks ('mvfa-lite[ray]')")
    cluster = parser.add_argument_group("cluster resources per cell (override the grid "
                                       "file's resources:)")
    cluster.add_argument("--gpus", type=int, help="without it or resources.gpus: slurm 0, ray 1 "
                         "where GPUs exist")
    cluster.add_argument("--cpus", type=int)
    cluster.add_argument("--mem-gb", type=float)
    cluster.add_argument("--timeout-min", type=int, help="slurm: each cell's time limit in "
                         "minutes, required (here or resources.timeout_min); printed before "
                         "submitting")
    cluster.add_argument("--partition", help="slurm partition, checked against sinfo "
                         "(default: the cluster's default)")
    cluster.add_argument("--submitit-cluster", choices=["slurm", "local"], default="slurm",
                         help="local: run the submitit jobs as processes on this machine")
    cluster.add_argument("--ray-address", help="auto, ray://head:10001, or none: $RAY_ADDRESS "
                         "if set, else a Ray runtime started here for the sweep")
    parser.set_defaults(handler=_sweep)


def _sweep(args) -> int:
    from .sweep import run_sweep
    if args.status:
        from .sweep_status import sweep_status
        sweep_status(args.grid)
        return 0
    options = {"local": {}, "slurm": {"cluster": args.submitit_cluster},
               "ray": {"address": args.ray_address}}[args.executor]
    resources = dict(gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem_gb,
                     timeout_min=args.timeout_min, partition=args.partition)
    report = run_sweep(args.grid, executor=args.executor, dry_run=args.dry_run,
                       kernel=args.kernel, force=args.force, resources=resources, **options)
    return 1 if report.failed else 0


def _add_compare_official(commands) -> None:
    parser = commands.add_parser(
        "compare-official", help="run the official MVFA code beside mvfa-lite: scores, "
        "training, speed", description="Run the official code (a checkout of "
        "MediaBrain-SJTU/MVFA-AD, in its own Python) and mvfa-lite's paper protocol on the same "
        "CLIP weights, adapter initialisation and data: scoring on a set with masks (as "
        "'Brain') and one without (as 'Chest'), one training epoch at batch 1 in the official "
        "data order, and the speed of that epoch in each program. Prints a table and PASS or "
        "FAIL; writes a JSON report. The official code is copied and patched, never in place.")
    parser.add_argument("official_dir", help="checkout of the official code")
    parser.add_argument("--official-python", default=sys.executable,
                        help="the Python that runs the official code (its venv, with kornia, "
                        "ftfy, scikit-learn); default: this one")
    parser.add_argument("--segmentation-data", help="set with masks, run as 'Brain' "
                        "(a folder or a shipped set's name; default: chestxray_synthlesion)")
    parser.add_argument("--classification-data", help="set without masks, run as 'Chest' "
                        "(default: the shipped chest X-rays)")
    parser.add_argument("--split", help="the split of both sets to use (default: each set's "
                        "test split)")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--model", dest="model_name", default="ViT-L-14-336",
                        help="the official code runs ViT-L-14-336 only")
    parser.add_argument("--clip-checkpoint", help="real CLIP weights (default: seeded random)")
    parser.add_argument("--parts", nargs="+", default=["scoring", "training", "speed"],
                        choices=["scoring", "training", "speed", "checkpoint"],
                        help="what to compare (speed needs training); default: all but "
                        "checkpoint (the official code's saved .pth scored by both)")
    parser.add_argument("--speed-precision", choices=["fp32", "auto"], default="fp32",
                        help="mvfa-lite's precision in the timed run (the official code runs "
                        "fp32 on a CPU); auto = bf16 where measured faster")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both programs run (the official code takes cuda:0 and "
                        "its fp16 autocast on a GPU); default: cpu")
    parser.add_argument("--work-dir", help="a new or empty folder to stage in, kept "
                        "(default: a temporary folder, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--resume", action="store_true",
                        help="finish an interrupted run in --work-dir (same inputs)")
    parser.add_argument("--out", default="compare-official.json")
    parser.set_defaults(handler=_compare_official)


def _compare_official(args) -> int:
    from ..outputs import write_json
    from .compare.comparison import compare_official
    from .compare.report import format_report
    from .compare.staging import default_datasets
    defaults = default_datasets()
    data = {name: catalogue.path(given) if given else defaults[name] for name, given in
            (("segmentation_data", args.segmentation_data),
             ("classification_data", args.classification_data))}
    report = compare_official(args.official_dir, official_python=args.official_python,
                              split=args.split, shots=args.shots, model_name=args.model_name,
                              clip_checkpoint=args.clip_checkpoint,
                              parts=args.parts, speed_precision=args.speed_precision,
                              device=args.device,
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

