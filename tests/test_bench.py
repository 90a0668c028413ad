"""The benchmark runs every stage and reports sensible figures (no speed is asserted)."""
from __future__ import annotations

from mvfa_lite.tools.bench import GeneratedImages, format_table, run_benchmark


def test_benchmark_reports_every_stage(tiny_config):
    config = tiny_config.replace(epochs=1, batch_size=4)
    result = run_benchmark(config, batch_size=4, train_batch=4, test_images=6,
                           zero_shot_images=4, repeats=1, baseline=True, progress=False)
    stages = result["stages"]
    assert set(stages) == {"forward", "train_step", "fewshot_scoring", "end_to_end",
                           "zero_shot_epoch", "baseline"}
    for name in ("forward", "train_step", "fewshot_scoring"):
        assert stages[name]["images_per_s"] > 0 and stages[name]["gflops_per_image"] > 0
    # training (forward + backward) costs more arithmetic per image than the forward pass
    assert stages["train_step"]["gflops_per_image"] > stages["forward"]["gflops_per_image"]
    assert stages["fewshot_scoring"]["bank_vectors_per_level"] == 4 * 11 * 290
    assert stages["end_to_end"]["train_images"] == 2 * 4 * 11
    assert stages["end_to_end"]["test_images"] == 6
    assert "images/s" in format_table(result) and result["weights"] == "random"


def test_generated_images_are_deterministic():
    data = GeneratedImages(4, 32)
    assert (data[1]["image"] == data[1]["image"]).all() and data[1]["label"] == 1
    assert data[1]["mask"].sum() > 0 and data[0]["mask"].sum() == 0
    assert not (data[0]["image"] == data[2]["image"]).all()
