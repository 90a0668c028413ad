"""Run one program's script with observers and report what it did (used by compare-official).

``compare-official`` starts this file as a script, in the Python of the program observed:

    PYTHON driver.py --out RESULT.pt [--official] [--count-flops] [--init-seed S ...]
        -- SCRIPT ARGS

It runs SCRIPT as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]``, optionally counting its
arithmetic (../flops.py, loaded by file path: the official environment has no mvfa-lite), then
saves a dict of tensors, lists and numbers (``torch.load(..., weights_only=True)`` reads it).
Counting slows a program down (every operation passes through Python), so the runs that are
timed run without this driver.

With ``--official`` the working directory is a staged copy of the official code, and the
driver watches it through the names its scripts import, without changing a line of it:

* ``CLIP.adapter.CLIP_Inplanted``: the adapters right after construction (``init``) and at the
  end (``final``); a fingerprint of every image of a training step (the data order);
* ``torch.Tensor.backward``: the loss of every training step;
* ``utils.encode_text_with_prompt_ensemble``: the text features;
* ``sklearn.metrics.roc_auc_score``: the scores the official test passes to its metric;
* ``dataset.medical_few.MedDataset`` (and ``dataset.medical_zero.MedTestDataset``): the test
  images in the official order.

``--losses INPUTS`` also computes the official focal and dice losses (loss.py) on fixed
inputs (a file with ``probs`` (B, 2, S, S) and ``masks`` (B, S, S)).

``--init-seed S`` first writes the official adapter initialisation under seed S (the official
``ClipAdapter`` class, in the official construction order) to ``--init-path``, where the
official test script loads it from.
"""
from __future__ import annotations

import argparse
import importlib.util
import resource
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def fingerprint(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 192): the image averaged over an 8 x 8 grid; tells images apart."""
    return F.adaptive_avg_pool2d(images.detach().float().cpu(), 8).flatten(1).double()


def _as_tensor(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def _state(bank) -> dict:
    return {name: value.detach().cpu().clone() for name, value in bank.state_dict().items()}


def _observe_official(record: dict) -> None:
    """Install the observers listed in the module docstring (the cwd is the official code)."""
    sys.path.insert(0, str(Path.cwd()))
    import sklearn.metrics
    import utils
    from CLIP import adapter
    from dataset import medical_few

    auroc = sklearn.metrics.roc_auc_score

    def roc_auc_score(y_true, y_score, *args, **kwargs):
        value = auroc(y_true, y_score, *args, **kwargs)
        record["auroc"].append({"y_true": _as_tensor(y_true).flatten(),
                                "y_score": _as_tensor(y_score).flatten(), "value": float(value)})
        return value
    sklearn.metrics.roc_auc_score = roc_auc_score

    encode = utils.encode_text_with_prompt_ensemble

    def encode_text_with_prompt_ensemble(*args, **kwargs):
        text = encode(*args, **kwargs)
        record["text"].append(text.detach().float().cpu().clone())
        return text
    utils.encode_text_with_prompt_ensemble = encode_text_with_prompt_ensemble

    model_class = adapter.CLIP_Inplanted
    construct, forward = model_class.__init__, model_class.forward

    def observed_init(self, *args, **kwargs):
        construct(self, *args, **kwargs)
        record["model"] = self
        record["init"] = {"seg_adapters": _state(self.seg_adapters),
                          "det_adapters": _state(self.det_adapters)}

    def observed_forward(self, x, *args, **kwargs):
        if torch.is_grad_enabled():                      # a training step
            record["fingerprints"].append(fingerprint(x))
        return forward(self, x, *args, **kwargs)
    model_class.__init__, model_class.forward = observed_init, observed_forward

    backward = torch.Tensor.backward

    def observed_backward(self, *args, **kwargs):
        if self.numel() == 1:
            record["step_losses"].append(float(self.detach()))
        return backward(self, *args, **kwargs)
    torch.Tensor.backward = observed_backward

    dataset_init = medical_few.MedDataset.__init__

    def observed_dataset(self, *args, **kwargs):
        dataset_init(self, *args, **kwargs)
        record["test_paths"] = [str(path) for path in self.x]
    medical_few.MedDataset.__init__ = observed_dataset
    if importlib.util.find_spec("dataset.medical_zero") is not None:     # test_zero.py's
        from dataset import medical_zero
        zero_init = medical_zero.MedTestDataset.__init__

        def observed_zero_dataset(self, *args, **kwargs):
            zero_init(self, *args, **kwargs)
            record["test_paths"] = [str(path) for path in self.x]
        medical_zero.MedTestDataset.__init__ = observed_zero_dataset


def _write_initialisation(seed: int, width: int, bottleneck: int, levels: int, path: str) -> None:
    """The official adapters as CLIP_Inplanted builds them (seg bank, then det bank), seeded."""
    sys.path.insert(0, str(Path.cwd()))
    from CLIP.adapter import ClipAdapter
    torch.manual_seed(seed)
    banks = {}
    for name in ("seg_adapters", "det_adapters"):
        banks[name] = torch.nn.ModuleList(ClipAdapter(width, bottleneck=bottleneck)
                                          for _ in range(levels)).state_dict()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(banks, path)


def _official_losses(path: str) -> dict:
    from loss import BinaryDiceLoss, FocalLoss
    inputs = torch.load(path, weights_only=True)
    return {"focal": float(FocalLoss()(inputs["probs"], inputs["masks"])),
            "dice": float(BinaryDiceLoss()(inputs["probs"][:, 1], inputs["masks"]))}


def _load_flops_module():
    path = Path(__file__).parent.parent / "flops.py"
    spec = importlib.util.spec_from_file_location("mvfa_flops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--official", action="store_true")
    parser.add_argument("--count-flops", action="store_true")
    parser.add_argument("--losses")
    parser.add_argument("--init-seed", type=int)
    parser.add_argument("--init-path")
    parser.add_argument("--width", type=int)
    parser.add_argument("--bottleneck", type=int)
    parser.add_argument("--levels", type=int)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)

    record = {"auroc": [], "text": [], "fingerprints": [], "step_losses": [], "init": None,
              "model": None, "test_paths": []}
    if options.init_seed is not None:
        _write_initialisation(options.init_seed, options.width, options.bottleneck,
                              options.levels, options.init_path)
    if options.official:
        _observe_official(record)
    counter = _load_flops_module().FlopCount() if options.count_flops else None

    sys.argv = [options.script, *[a for a in options.args if a != "--"]]
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    if counter is not None:
        counter.__enter__()
    try:
        runpy.run_path(options.script, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise
    finally:
        if counter is not None:
            counter.__exit__(None, None, None)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu

    model = record.pop("model")
    result = {
        "script_wall_s": wall, "script_cpu_s": cpu,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "torch": str(torch.__version__),
        **{key: value for key, value in record.items() if key != "fingerprints"},
        "fingerprints": torch.cat(record["fingerprints"]) if record["fingerprints"] else None,
        "final": None if model is None else {"seg_adapters": _state(model.seg_adapters),
                                             "det_adapters": _state(model.det_adapters)},
        "flops": None if counter is None else {"forward": counter.forward,
                                               "backward": counter.backward},
        "losses": _official_losses(options.losses) if options.losses else None,
    }
    torch.save(result, options.out)


if __name__ == "__main__":
    main()
