"""The implement-it exercises' auto-check (mvfa_lite.teaching.checks): it passes the
package's own function, and fails a planted wrong answer with a message that says what is
wrong (which function, which input, which output, how far off)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mvfa_lite.method import branches, losses
from mvfa_lite.teaching import checks


def _query_and_bank():
    g = checks.generator(0)
    return torch.randn(2, 5, 8, generator=g), torch.randn(7, 8, generator=g)


def test_the_right_answer_passes_and_says_so(capsys):
    query, bank = _query_and_bank()

    def nearest_distance(q, b):
        cos = F.normalize(q, dim=-1) @ F.normalize(b, dim=-1).T
        return 1 - cos.amax(dim=-1)

    assert checks.check(nearest_distance, branches.nearest_cosine_distance,
                        checks.case(query, bank)) == 1
    assert "correct: nearest_distance matches " \
        "mvfa_lite.method.branches.nearest_cosine_distance" in capsys.readouterr().out


def test_a_planted_wrong_answer_fails_with_a_helpful_message():
    query, bank = _query_and_bank()

    def nearest_distance(q, b):            # planted mistake: the bank is not normalised
        cos = F.normalize(q, dim=-1) @ b.T
        return 1 - cos.amax(dim=-1)

    with pytest.raises(checks.CheckFailed) as failure:
        checks.check(nearest_distance, branches.nearest_cosine_distance,
                     checks.case(query, bank, name="2 images of 5 patches"))
    message = str(failure.value)
    print(message)                          # the demo in the note: pytest -s shows it
    assert message.startswith("nearest_distance differs from "
                              "mvfa_lite.method.branches.nearest_cosine_distance on "
                              "2 images of 5 patches (tensor (2, 5, 8) float32, "
                              "tensor (7, 8) float32): the result: largest difference")
    assert "yours" in message and "the package's" in message and "% of the values differ" \
        in message


def test_a_wrong_shape_a_missing_output_and_a_factor_are_named():
    g = checks.generator(1)
    probs = torch.rand(2, 6, 6, generator=g)
    mask = (torch.rand(2, 6, 6, generator=g) > 0.7).float()
    with pytest.raises(checks.CheckFailed, match=r"yours has shape \(2,\), the package's \(\)"):
        checks.check(lambda p, m: torch.ones(2), losses.dice_loss, checks.case(probs, mask))
    with pytest.raises(checks.CheckFailed, match="yours has 1 outputs .* the package's 2"):
        checks.check(lambda f, b, s: torch.zeros(1), lambda f, b, s: (torch.zeros(1),) * 2,
                     checks.case(1, 2, 3))
    zero, few = torch.rand(9, generator=g), torch.rand(9, generator=g)
    with pytest.raises(checks.CheckFailed, match=r"times 2 \(a missing factor\?\)"):
        checks.check(lambda z, f: 2 * branches.fuse(z, f), branches.fuse,
                     checks.case(zero, few))


def test_a_stub_says_it_is_not_written_yet():
    def image_score(logits):
        raise NotImplementedError("Exercise 2: write the body")

    with pytest.raises(checks.CheckFailed, match="image_score is not written yet: replace "
                       "its `raise NotImplementedError`"):
        checks.check(image_score, branches.class_score, checks.case(torch.zeros(1, 4, 2)))


def test_an_error_inside_the_answer_is_reported_with_the_case():
    def image_score(logits):
        return logits.softmax(dim=3)

    with pytest.raises(checks.CheckFailed, match=r"image_score raised IndexError on "
                       r"one image \(tensor \(1, 4, 2\) float32\)"):
        checks.check(image_score, branches.class_score,
                     checks.case(torch.zeros(1, 4, 2), name="one image"))
