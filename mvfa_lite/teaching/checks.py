"""Auto-checks for the notebooks' implement-it exercises.

A student writes a function (in the student edition its body is ``raise
NotImplementedError``); the check cell calls it and the package's own function on the same
fixed inputs and compares every output with :func:`torch.testing.assert_close`::

    from mvfa_lite.teaching import checks
    checks.check(image_score, branches.class_score, checks.case(logits))

On success it prints one line. On failure it raises :class:`CheckFailed` (an
``AssertionError``) whose message names the exercise's function, the input case, the output
that differs and how (shape, dtype, or the largest difference and where), so that the
student sees what is wrong rather than a bare traceback.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


class CheckFailed(AssertionError):
    """The student's function does not match the package's on a fixed input."""


@dataclass
class Case:
    """One fixed input: positional and keyword arguments, and a name for messages."""
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    name: str = ""


def case(*args, name: str = "", **kwargs) -> Case:
    """A fixed input for :func:`check`: ``case(x, bank, name="2 images", chunk=3)``."""
    return Case(args, kwargs, name)


def generator(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator, so a check's inputs are the same on every machine."""
    return torch.Generator().manual_seed(seed)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _describe_case(item: Case, index: int) -> str:
    label = item.name or f"case {index + 1}"
    shown = [_describe(a) for a in item.args] + \
        [f"{k}={v!r}" if not isinstance(v, torch.Tensor) else f"{k}={_describe(v)}"
         for k, v in item.kwargs.items()]
    return f"{label} ({', '.join(shown)})" if shown else label


def _flatten(value: Any, where: str = "the result") -> list[tuple[str, Any]]:
    """Nested tuples/lists/dicts -> [(path, leaf)], to compare output by output."""
    if isinstance(value, dict):
        return [pair for key in value for pair in _flatten(value[key], f"{where}[{key!r}]")]
    if isinstance(value, (list, tuple)) and not _is_scalar_list(value):
        return [pair for i, v in enumerate(value) for pair in _flatten(v, f"{where}[{i}]")]
    return [(where, value)]


def _is_scalar_list(value) -> bool:
    return len(value) > 0 and all(isinstance(v, str) for v in value)


def _difference(got: torch.Tensor, want: torch.Tensor) -> str:
    diff = (got.double() - want.double()).abs()
    finite = torch.isfinite(diff)
    if not bool(finite.all()):
        where = tuple(int(i) for i in torch.nonzero(~finite)[0])
        return (f"{int((~finite).sum())} values are nan/inf or differ in nan/inf, the first "
                f"at index {where}: yours {got[where].item():.6g}, the package's "
                f"{want[where].item():.6g}")
    flat = int(diff.argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) \
        if diff.dim() else ()
    worst = float(diff.max())
    share = float((diff > 1e-6 + 1e-4 * want.double().abs()).double().mean())
    hint = ""
    if want.numel() > 1 and torch.allclose(got.double(), -want.double(), rtol=1e-4, atol=1e-6):
        hint = " Yours is the package's with the sign flipped."
    elif want.numel() > 1 and float(want.double().abs().max()) > 0:
        ratio = got.double().sum() / want.double().sum()
        if math.isfinite(float(ratio)) and abs(float(ratio) - 1) > 1e-3 and torch.allclose(
                got.double(), ratio * want.double(), rtol=1e-4, atol=1e-6):
            hint = f" Yours is the package's times {float(ratio):.4g} (a missing factor?)."
    return (f"largest difference {worst:.3g} at index {where}: yours "
            f"{got[where].item():.6g}, the package's {want[where].item():.6g}; "
            f"{100 * share:.0f} % of the values differ.{hint}")


def compare(got: Any, want: Any, where: str = "the result", rtol: float | None = None,
            atol: float | None = None) -> None:
    """Raise :class:`CheckFailed` with a readable reason if ``got`` is not ``want``."""
    got_parts, want_parts = _flatten(got, where), _flatten(want, where)
    if len(got_parts) != len(want_parts):
        raise CheckFailed(f"{where}: yours has {len(got_parts)} outputs "
                          f"({', '.join(_describe(v) for _, v in got_parts)}), the package's "
                          f"{len(want_parts)} ({', '.join(_describe(v) for _, v in want_parts)})")
    for (path, mine), (_, theirs) in zip(got_parts, want_parts):
        if hasattr(theirs, "__array__") and not isinstance(theirs, torch.Tensor):
            theirs = torch.as_tensor(theirs)           # numpy arrays and numbers
        if hasattr(mine, "__array__") and not isinstance(mine, torch.Tensor):
            mine = torch.as_tensor(mine)
        number = (int, float)
        if isinstance(theirs, float) and (isinstance(mine, number) or (
                isinstance(mine, torch.Tensor) and mine.dim() == 0)):
            mine = torch.as_tensor(mine, dtype=torch.float64)   # a float: compared as one
            theirs = torch.tensor(theirs, dtype=torch.float64)
        elif isinstance(theirs, torch.Tensor) and isinstance(mine, number) and \
                not isinstance(mine, bool) and theirs.dim() == 0:
            mine = torch.tensor(mine, dtype=theirs.dtype)
        if not isinstance(theirs, torch.Tensor):
            if mine != theirs:
                raise CheckFailed(f"{path}: yours is {mine!r}, the package's is {theirs!r}")
            else:
                continue
        if not isinstance(mine, torch.Tensor):
            raise CheckFailed(f"{path}: yours is {_describe(mine)}, the package's is a "
                              f"{_describe(theirs)}")
        if mine.shape != theirs.shape:
            raise CheckFailed(f"{path}: yours has shape {tuple(mine.shape)}, the package's "
                              f"{tuple(theirs.shape)}")
        if mine.dtype != theirs.dtype:
            raise CheckFailed(f"{path}: yours is {mine.dtype}, the package's {theirs.dtype}")
        try:
            torch.testing.assert_close(mine.detach().cpu(), theirs.detach().cpu(),
                                       rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError:
            raise CheckFailed(f"{path}: {_difference(mine.detach().cpu(), theirs.detach().cpu())}"
                              ) from None


def check(student: Callable, reference: Callable, *cases: Case, rtol: float | None = None,
          atol: float | None = None, name: str | None = None,
          against: str | None = None) -> int:
    """Call ``student`` and ``reference`` on every case and compare what they return.

    ``rtol``/``atol``: the tolerances of :func:`torch.testing.assert_close` (both None: its
    defaults for the dtype). Returns the number of cases checked; prints one line when all
    match. Raises :class:`CheckFailed` with what is wrong, naming the case. ``name`` and
    ``against`` name the two functions in messages (default: their own names).
    """
    label = name or getattr(student, "__name__", "your function")
    ref_name = against or \
        f"{getattr(reference, '__module__', '')}.{getattr(reference, '__qualname__', '')}"
    if not cases:
        raise ValueError("check needs at least one case")
    for index, item in enumerate(cases):
        where = _describe_case(item, index)
        want = reference(*item.args, **item.kwargs)
        try:
            got = student(*item.args, **item.kwargs)
        except NotImplementedError:
            raise CheckFailed(f"{label} is not written yet: replace its `raise "
                              "NotImplementedError` with your code, run that cell, then this "
                              "one again") from None
        except Exception as error:
            raise CheckFailed(f"{label} raised {type(error).__name__} on {where}: {error}"
                              ) from error
        try:
            compare(got, want, "the result", rtol, atol)
        except CheckFailed as failure:
            raise CheckFailed(f"{label} differs from {ref_name.strip('.')} on {where}: "
                              f"{failure}") from None
    print(f"correct: {label} matches {ref_name.strip('.')} on {len(cases)} fixed "
          f"input{'s' if len(cases) > 1 else ''}")
    return len(cases)


# --- the training-step exercise: both steps run from the same copy of the adapters -------
def after_one_step(step: Callable, model, text: torch.Tensor, has_masks: bool,
                   lr: float = 1e-3) -> Callable:
    """A function of a batch (stem, masks, labels) that runs ``step`` on a fresh copy of
    ``model`` with fresh Adam optimisers and returns (its loss, every adapter weight after
    the step), so that :func:`check` can compare two training steps.

    ``step(model, stem, masks, labels, text, optimizers, has_masks)`` is the exercise's
    signature; :func:`package_step` is the package's step in that signature.
    """
    import copy

    def run(stem, masks, labels):
        trained = copy.deepcopy(model)
        trained.banks.train()
        optimizers = {bank: torch.optim.Adam(getattr(trained.banks, bank).parameters(), lr=lr)
                      for bank in ("seg", "det")}
        loss = step(trained, stem, masks, labels, text, optimizers, has_masks)
        return loss, {name: p.detach() for name, p in trained.banks.named_parameters()}
    run.__name__ = getattr(step, "__name__", "step")
    run.__qualname__ = getattr(step, "__qualname__", run.__name__)
    run.__module__ = getattr(step, "__module__", "")
    return run


def package_step(model, stem, masks, labels, text, optimizers, has_masks):
    """mvfa_lite.protocols.train's one optimiser step, in the exercise's signature."""
    from ..protocols.train import Source, _train_step
    from ..runtime import grad_scaler

    source = Source("check", None, text, has_masks)
    batch = {"stem": stem, "mask": masks, "label": labels}
    loss, _ = _train_step(model, source, batch, optimizers,
                          grad_scaler(model.device, model.config.precision))
    return loss


package_step.__module__, package_step.__qualname__ = "mvfa_lite.protocols.train", "_train_step"
