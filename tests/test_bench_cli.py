"""`mvfa-lite bench` sizes: --quick changes the defaults, never what the user gave."""
from mvfa_lite.tools.bench_command import BENCH_QUICK, BENCH_SIZES, bench_sizes
from mvfa_lite.tools.cli import build_parser


def sizes(*argv: str) -> dict:
    return bench_sizes(build_parser().parse_args(["bench", *argv]))


def test_quick_keeps_the_sizes_given():
    assert sizes() == BENCH_SIZES
    assert sizes("--quick") == BENCH_QUICK
    assert sizes("--quick", "--test-images", "40", "--epochs", "2") == \
        {**BENCH_QUICK, "test_images": 40, "epochs": 2}
    assert sizes("--batch-size", "8")["batch_size"] == 8


def test_operator_kinds():
    from mvfa_lite.tools.profile import OTHER, op_kind
    assert op_kind("aten::addmm") == op_kind("aten::mm") == op_kind("aten::bmm") == "GEMM"
    assert op_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert op_kind("aten::_softmax") == "attention"
    assert op_kind("aten::_to_copy") == op_kind("aten::copy_") == "casts and copies"
    assert op_kind("aten::native_layer_norm") == op_kind("aten::gelu") == \
        "norms and elementwise"
    assert op_kind("aten::view") == OTHER


def test_profile_command_breaks_the_time_down(tmp_path, capsys):
    import json

    from mvfa_lite.tools.cli import main
    out = tmp_path / "profile.json"
    assert main(["bench", "--profile", "--model", "tiny-random", "--device", "cpu",
                 "--train-batch", "2", "--precision", "fp32", "--repeats", "1",
                 "--shots", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = {(r["stage"], r["batch"]) for r in result["runs"]}
    assert runs == {("train step", 1), ("train step", 2), ("scoring", 1), ("scoring", 2)}
    for run in result["runs"]:
        assert run["precision"] == "fp32" and run["seconds"] > 0
        assert run["kinds"]["GEMM"] > 0                     # the linear layers were seen
        # the kinds split the wall time: their sum is it (overhead = the remainder)
        assert abs(sum(run["kinds"].values()) - run["seconds"]) < 0.05 * run["seconds"] or \
            run["kinds"]["Python and dispatch"] == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "matrix units" in printed
