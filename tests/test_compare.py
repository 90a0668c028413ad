"""compare-official, run against a small stand-in of the official code (tests/official_standin,
a tiny CLIP) so that the command cannot rot; the full ViT-L comparison is a benchmark."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mvfa_lite.config import MVFAConfig
from mvfa_lite.data.layout import ADDataset
from mvfa_lite.data.shots import ShotSet
from mvfa_lite.errors import MVFAError
from mvfa_lite.protocols.evaluate import Scores
from mvfa_lite.protocols.train import Source, fit
from mvfa_lite.tools.cli import main
from mvfa_lite.tools.compare.agreement import (
    agreement,
    compare_scores,
    data_order,
    step_agreement,
)
from mvfa_lite.tools.compare.comparison import _Comparison, compare_official
from mvfa_lite.tools.compare.driver import fingerprint
from mvfa_lite.tools.compare.report import _speed_lines, speed_report
from mvfa_lite.tools.compare.staging import (
    CUDA_LINE,
    OURS_PHASES,
    banks_from_official,
    check_official_python,
    nudge_by_one_ulp,
    phase_name,
    phase_seconds,
    stage_code,
    stage_dataset,
    third_party_imports,
)

STANDIN = Path(__file__).resolve().parent / "official_standin"


@pytest.fixture(scope="module")
def lesion_set(tmp_path_factory) -> Path:
    """6 normal and 6 abnormal 64 x 80 grey images; each lesion a bright box with its mask."""
    root = tmp_path_factory.mktemp("lesions")
    rng = np.random.default_rng(0)
    for kind in ("good", "Ungood"):
        (root / "embedded" / kind / "img").mkdir(parents=True)
    (root / "embedded" / "Ungood" / "anomaly_mask").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 120, (64, 80)).astype(np.uint8)).save(
            root / "embedded" / "good" / "img" / f"normal_{i}.png")
        image = rng.integers(0, 120, (64, 80)).astype(np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        y, x = rng.integers(8, 40, 2)
        image[y:y + 16, x:x + 20], mask[y:y + 16, x:x + 20] = 230, 255
        Image.fromarray(image).save(root / "embedded" / "Ungood" / "img" / f"lesion_{i}.png")
        Image.fromarray(mask).save(root / "embedded/Ungood/anomaly_mask" / f"lesion_{i}.png")
    return root


def test_compare_official_runs_end_to_end(lesion_set, chest_root, tmp_path, capsys):
    out = tmp_path / "report.json"
    status = main(["compare-official", str(STANDIN), "--official-python", sys.executable,
                   "--segmentation-data", str(lesion_set), "--classification-data",
                   str(chest_root), "--shots", "2", "--model", "tiny-random",
                   "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    for key, images in (("Brain", 8), ("Chest", 36)):             # 12 - 2k and 40 - 2k
        entry = report["scoring"][key]
        assert entry["test_images"] == images and entry["passed"], entry
        assert entry["image"]["pearson"] > 0.999 and entry["text_max_abs_diff"] < 1e-5
    assert report["scoring"]["Brain"]["pixel"]["auroc_diff"] < 1e-4
    assert "pixel" not in report["scoring"]["Chest"]
    assert report["losses"]["passed"]
    training = report["training"]
    assert training["order_reproduced"] and training["official_steps"] == 2 * 2 * 11
    assert training["ours_steps"] == training["official_steps"]
    assert training["step_losses"]["pearson"] > 0.999 and training["passed"]
    assert training["step_losses"]["first_steps_max_abs_diff"] < 1e-5
    assert training["adapters_relative_diff"] < 0.05
    # the yardstick: the same epoch from adapters one ulp away, a rounding-sized change
    assert 0 < training["rounding_yardstick"]["max_abs_diff"] < 1e-2
    assert len(training["auroc_after_epoch"]["image"]) == 3
    speed = report["speed"]
    # the official code computes weight gradients for all of CLIP; mvfa-lite for the adapters
    assert speed["official"]["gflop_backward"] > speed["ours"]["gflop_backward"] > 0
    assert speed["ratios"]["work"] > 1 and speed["ours"]["wall_s"] > 0
    assert speed["gemm_peak_gflop_per_s"]["fp32"] > 0
    # every function timed is found in the profiles (a renamed or moved one would read 0 s)
    assert list(speed["ours"]["phases_s"]) == list(OURS_PHASES)
    for program in ("official", "ours"):
        assert all(seconds > 0 for seconds in speed[program]["phases_s"].values()), speed
    assert "compare-official" in printed and "speed:" in printed
    assert status == (0 if report["passed"] else 1)
    # the official checkout itself is never patched: the copy was
    assert CUDA_LINE in (STANDIN / "CLIP" / "adapter.py").read_text()
    assert CUDA_LINE not in (tmp_path / "work" / "code" / "CLIP" / "adapter.py").read_text()


def test_staged_layout_and_seed_file(lesion_set, tmp_path):
    clip = tmp_path / "weights.pt"
    clip.write_bytes(b"")
    code = stage_code(STANDIN, tmp_path / "work", clip)
    root = stage_dataset(ADDataset(lesion_set, "embedded"), "Brain", code, 2, seed=0)
    counts = {split: {kind: len(list((root / split / kind / "img").iterdir()))
                      for kind in ("good", "Ungood")} for split in ("valid", "test")}
    assert counts == {"valid": {"good": 2, "Ungood": 2}, "test": {"good": 4, "Ungood": 4}}
    lines = (code / "dataset/fewshot_seed/Brain/2-shot.txt").read_text().splitlines()
    assert lines[0].startswith("a-0: lesion_") and lines[1].startswith("n-0: normal_")
    assert lines[0].split()[1:] == sorted(p.name for p in (root / "valid/Ungood/img").iterdir())
    assert (root / "test/Ungood/anomaly_mask").is_dir()
    assert (code / "CLIP/ckpt/ViT-L-14-336px.pt").resolve() == clip.resolve()


def test_score_comparison_aligns_images_by_name_and_catches_a_difference():
    paths = [f"/a/{name}.png" for name in "pqrs"]
    scores = Scores(paths=paths, labels=torch.tensor([0, 0, 1, 1]),
                    image_scores=torch.tensor([0.1, 0.2, 0.8, 0.9]),
                    maps=torch.zeros(4, 2, 2), masks=None)
    official = {"image": {"y_score": [0.9, 0.1, 0.2, 0.8], "value": 1.0}}
    same = compare_scores(official, ["/o/s.png", "/o/p.png", "/o/q.png", "/o/r.png"], scores,
                          has_masks=False)
    assert same["image"]["pearson"] == pytest.approx(1.0) and same["image"]["passed"]
    shuffled = compare_scores(official, ["/o/p.png", "/o/q.png", "/o/r.png", "/o/s.png"],
                              scores, has_masks=False)
    assert shuffled["image"]["pearson"] < 0.5 and not shuffled["image"]["passed"]
    assert agreement([1, 2, 3], [1, 2, 3.5]) == {"pearson": pytest.approx(0.9933, abs=1e-4),
                                                 "max_abs_diff": 0.5}


def test_data_order_is_recovered_from_fingerprints():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=generator)
    shots = ShotSet(images, torch.zeros(6, 32, 32), torch.arange(6) % 2)
    permutation = torch.tensor([4, 0, 5, 2, 1, 3])
    order, worst = data_order(fingerprint(images[permutation] + 1e-6), shots)
    assert order.tolist() == permutation.tolist() and worst < 1e-4
    duplicated = fingerprint(images[[0, 0, 1, 2, 3, 4]])
    assert data_order(duplicated, shots)[0] is None


def test_official_adapters_map_onto_the_banks(tiny_model):
    width, joint = tiny_model.backbone.width, tiny_model.backbone.embed_dim
    state = {bank: {f"{level}.fc{layer}.0.weight": torch.full(
        (joint, width) if layer == 1 else (width, joint), float(10 * level + layer))
        for level in range(4) for layer in (1, 2)} for bank in ("seg_adapters", "det_adapters")}
    banks_from_official(tiny_model, state)
    for bank in (tiny_model.banks.seg, tiny_model.banks.det):
        assert [a.down[0].weight[0, 0].item() for a in bank] == [1, 11, 21, 31]
        assert [a.up[0].weight[0, 0].item() for a in bank[:3]] == [2, 12, 22]
        assert bank[3].up is None                # the official level-4 fc2 is dead weight


def test_paper_protocol_is_the_official_run():
    assert MVFAConfig().batch_size == 1
    assert MVFAConfig(protocol="paper-b16").batch_size == 16
    assert MVFAConfig(protocol="corrected").batch_size == 16
    assert MVFAConfig(protocol="paper-b16").bce_on == MVFAConfig().bce_on == "logits"
    assert MVFAConfig().replace(protocol="corrected").batch_size == 16
    assert MVFAConfig(batch_size=4).replace(protocol="corrected").batch_size == 4


@pytest.mark.parametrize("schedule, calls, best_epoch, best_step",
                         [("epoch", 2, 1, 10), ("fifths", 10, 2, 18)])
def test_official_selection_schedules(tiny_model, schedule, calls, best_epoch, best_step):
    """train_few.py selects after every epoch and keeps the first of equal scores;
    train_zero.py selects before batches 0, n/5, 2n/5, ... and keeps the last."""
    generator = torch.Generator().manual_seed(0)
    shots = ShotSet(torch.rand(10, 3, 240, 240, generator=generator), torch.zeros(10, 240, 240),
                    torch.arange(10) % 2)
    source = Source("x", shots, tiny_model.text_features("x"), has_masks=False)
    seen = []

    def select():
        seen.append(1)
        return 1.0, None                          # every selection ties
    result = fit(tiny_model, [source], epochs=2, lr=1e-3, batch_size=1, select=select,
                 schedule=schedule, progress=False)
    assert len(seen) == calls and len(result.step_losses) == 20
    assert (result.best_epoch, result.best_step) == (best_epoch, best_step)


def test_speed_shortcuts_change_nothing(tiny_model):
    """mvfa-lite train cuts the text padding and builds the bank from cached stems: exact."""
    from mvfa_lite.method.prompts import state_sentences
    from mvfa_lite.protocols.evaluate import build_memory_bank
    from mvfa_lite.protocols.train import compute_stems
    backbone = tiny_model.backbone
    sentences = state_sentences("Chest X-ray film")
    tokens = backbone.tokenizer(sentences)
    assert int(tokens.argmax(dim=-1).max()) < 30                    # of 77 positions
    full = torch.nn.functional.normalize(backbone.clip.encode_text(tokens).float(), dim=-1)
    torch.testing.assert_close(backbone.encode_text(sentences), full, atol=1e-6, rtol=0)
    images = torch.rand(3, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    shots = ShotSet(images, torch.zeros(3, 240, 240), torch.zeros(3))
    from_images = build_memory_bank(tiny_model, images)
    from_stems = build_memory_bank(tiny_model, stems=compute_stems(tiny_model, shots))
    for a, b in zip(from_images.seg + from_images.det, from_stems.seg + from_stems.det):
        torch.testing.assert_close(a, b)


def test_an_interrupted_run_resumes_without_redoing_finished_parts(chest_root, tmp_path):
    options = dict(classification_data=chest_root, shots=2, model_name="tiny-random",
                   parts=("scoring",), work_dir=tmp_path / "work", say=lambda *a, **k: None)
    first = compare_official(STANDIN, official_python=sys.executable, **options)
    # a resumed run reads the finished parts back: the official code is not run again
    again = compare_official(STANDIN, official_python="/nonexistent/python", resume=True,
                             **options)
    assert again["scoring"] == first["scoring"] and again["passed"]
    with pytest.raises(MVFAError, match="not empty"):
        compare_official(STANDIN, official_python=sys.executable, **options)
    with pytest.raises(MVFAError, match="other inputs"):
        compare_official(STANDIN, official_python=sys.executable, resume=True,
                         **{**options, "shots": 3})


def test_step_agreement_by_hand():
    # ten steps; the gap is 1e-6 over the first eight (EXACT_STEPS), then 2e-4 and 3e-2
    reference = np.arange(10, dtype=np.float64)
    gaps = np.array([1e-6] * 8 + [2e-4, 3e-2])
    result = step_agreement(reference, reference + gaps)
    assert result["first_steps_max_abs_diff"] == pytest.approx(1e-6)
    assert result["first_step_over_1e-4"] == 8
    assert result["median_abs_diff"] == pytest.approx(1e-6)
    assert result["max_abs_diff"] == pytest.approx(3e-2)
    assert step_agreement(reference, reference)["first_step_over_1e-4"] is None


def test_nudge_moves_every_adapter_weight_by_one_ulp(tiny_model):
    before = [w.detach().clone() for w in tiny_model.banks.parameters()]
    nudge_by_one_ulp(tiny_model)
    for old, new in zip(before, tiny_model.banks.parameters()):
        assert (new > old).all()
        assert torch.equal(torch.nextafter(new, torch.full_like(new, -np.inf)), old)


def test_the_official_imports_are_read_from_its_files(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "train.py").write_text("import os, numpy as np\nimport pkg.sub\n"
                                       "from helper import f\nfrom not_installed_xyz.a import b\n")
    (tmp_path / "helper.py").write_text("def f():\n    import sklearn.metrics\n")
    (tmp_path / "pkg" / "sub.py").write_text("from . import other\nfrom .x import y\n")
    # its own modules (pkg, helper), relative and standard-library imports are left out
    assert third_party_imports(tmp_path) == {"numpy", "sklearn", "not_installed_xyz"}


def test_an_unfit_official_python_stops_in_one_line(chest_root, tmp_path, capsys):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("import numpy\nimport not_installed_xyz\n")
    with pytest.raises(MVFAError, match=r"lacks not_installed_xyz, which") as error:
        check_official_python(sys.executable, tmp_path / "code")
    assert "numpy" not in str(error.value)
    with pytest.raises(MVFAError, match="cannot be run"):
        check_official_python(str(tmp_path / "no-python"), tmp_path / "code")
    status = main(["compare-official", str(STANDIN), "--official-python",
                   str(tmp_path / "no-python"), "--classification-data", str(chest_root),
                   "--shots", "2", "--model", "tiny-random", "--work-dir", str(tmp_path / "w")])
    message = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(message) == 1 and "cannot be run" in message[0]


def test_a_phase_is_named_from_its_function_and_found_in_a_profile(tmp_path):
    import cProfile
    profile = cProfile.Profile()
    profile.runcall(step_agreement, np.arange(10.0), np.arange(10.0) + 1e-3)
    profile.dump_stats(tmp_path / "run.prof")
    name = phase_name(step_agreement)
    assert name == "agreement.py:step_agreement"
    assert phase_seconds(tmp_path / "run.prof", [name])[name] > 0
    assert "train.py:select" in OURS_PHASES and "shots.py:augment_shots" in OURS_PHASES


def test_speed_on_a_gpu_has_no_cpu_peak_and_names_each_precision():
    run = {"wall_s": 4.0, "cpu_s": 6.0, "load_average": [0.0, 0.0], "phases_s": {},
           "flops": {"forward": 4e9, "backward": 2e9}}
    report = speed_report(run, {**run, "wall_s": 1.0}, None,
                          {"official": "fp16", "ours": "bf16"}, "one epoch")
    assert report["ratios"]["wall"] == 4 and "targets" not in report
    assert "fraction_of_peak" not in report["ours"] and report["official"]["precision"] == "fp16"
    printed = "\n".join(_speed_lines(report))
    assert "GEMM peak" not in printed and "fp16" in printed and "4.00x" in printed


def test_speed_without_a_matched_order_is_recorded_unmeasured():
    # training() leaves no ours_flops when the official order cannot be matched to our shots
    reason = "the official training images could not be matched"
    part = SimpleNamespace(done={}, report={"training": {"order_reproduced": False,
                                                         "reason": reason}})
    _Comparison.speed(part, "Brain", "fp32")                # nothing run, nothing raised
    speed = part.report["speed"]
    assert speed["measured"] is False and reason in speed["reason"]
    assert reason in "\n".join(_speed_lines(speed))
