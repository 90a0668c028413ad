"""`mvfa-lite bench` sizes: --quick changes the defaults, never what the user gave."""
from mvfa_lite.tools.cli import BENCH_QUICK, BENCH_SIZES, bench_sizes, build_parser


def sizes(*argv: str) -> dict:
    return bench_sizes(build_parser().parse_args(["bench", *argv]))


def test_quick_keeps_the_sizes_given():
    assert sizes() == BENCH_SIZES
    assert sizes("--quick") == BENCH_QUICK
    assert sizes("--quick", "--test-images", "40", "--epochs", "2") == \
        {**BENCH_QUICK, "test_images": 40, "epochs": 2}
    assert sizes("--batch-size", "8")["batch_size"] == 8
