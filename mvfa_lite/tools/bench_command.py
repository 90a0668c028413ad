"""``mvfa-lite bench`` on the command line: its options and handler (the work is in
:mod:`.bench` and, with ``--profile``, :mod:`.profile`, imported when it runs, so that
``--help`` stays fast); and :func:`at_least`, the whole-number option type the commands use.
"""
from __future__ import annotations

import argparse
import sys

from ..config import PRECISIONS, PROTOCOLS, MVFAConfig

# `mvfa-lite bench` sizes: the full benchmark (3,715 = the BrainMRI test split) and --quick
BENCH_SIZES = dict(batch_size=64, train_batch=32, epochs=50, test_images=3715,
                   zero_shot_images=20000)
BENCH_QUICK = dict(batch_size=16, train_batch=16, epochs=1, test_images=32, zero_shot_images=64)


def at_least(low: int):
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


def add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="speed of every stage on this device",
                                description="Measure forward, training-step and scoring "
                                "throughput, the end-to-end few-shot protocol and one zero-shot "
                                "epoch, with random weights and generated images (speed does "
                                "not depend on either). Writes a JSON file.")
    parser.add_argument("--model", dest="model_name", default="ViT-L-14-336")
    parser.add_argument("--image-size", type=int, default=240)
    parser.add_argument("--device", default="auto")
    for option, default in BENCH_SIZES.items():
        parser.add_argument(f"--{option.replace('_', '-')}", type=at_least(1),
                           help=f"default {default}; with --quick {BENCH_QUICK[option]}")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized defaults: one epoch of the k = 4 recipe on a small set "
                        "(the options given still apply)")
    parser.add_argument("--baseline", action="store_true",
                        help="also time a batch-1 per-image loop like the official code's")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where the time of one training step and one scoring "
                        "batch goes, by kind of operator (torch.profiler), at batch 1 and "
                        "--train-batch (default 16), in fp32 and bf16 (or --precision)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="paper")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--out", default="bench.json")
    parser.set_defaults(handler=_bench)


def bench_sizes(args) -> dict:
    """The sizes given on the command line; the others from --quick's or the full defaults."""
    defaults = BENCH_QUICK if args.quick else BENCH_SIZES
    return {option: getattr(args, option) or default for option, default in defaults.items()}


def _bench(args) -> int:
    from ..outputs import write_json
    if args.profile:
        return _profile(args)
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


def _profile(args) -> int:
    from ..outputs import write_json
    from .profile import format_profile, run_profile
    precisions = ("fp32", "bf16") if args.precision == "auto" else (args.precision,)
    result = run_profile(args.model_name, args.image_size, args.device,
                         batches=(1, args.train_batch or 16), precisions=precisions,
                         shots=args.shots, repeats=args.repeats)
    result["command"] = "mvfa-lite " + " ".join(sys.argv[1:])
    write_json(args.out, result)
    print(format_profile(result))
    print(f"written to {args.out}")
    return 0
