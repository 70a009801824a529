"""CIF (paper 003): the vectorised integrate-and-fire against a frame-by-frame one written here."""

import math

import pytest
import torch

from sew_plugin.modules.cif import AlphaPredictor, cif, scale_alpha


def sequential_cif(h, alpha, keep_tail=False, min_frames=1):
    """One utterance, one frame at a time: accumulate, fire at each integer, split the crossing frame."""
    outputs, durations = [], []
    acc, weight, count = torch.zeros(h.size(-1), dtype=torch.float64), 0.0, 0
    for t in range(h.size(0)):
        a, x = float(alpha[t]), h[t].double()
        if a > 0:
            count += 1
        while weight + a >= 1.0:  # this frame completes the current output
            part = 1.0 - weight
            outputs.append(acc + part * x)
            durations.append(count)
            a -= part
            acc, weight, count = torch.zeros_like(acc), 0.0, 1 if a > 0 else 0
        acc, weight = acc + a * x, weight + a
    if (keep_tail and weight >= 0.5) or (len(outputs) < min_frames and weight > 0):
        outputs.append(acc / weight)
        durations.append(count)
    return outputs, durations


def check_against_sequential(h, alpha, keep_tail):
    out, lengths, durations = cif(h, alpha, keep_tail=keep_tail)
    for b in range(h.size(0)):
        ref, ref_durations = sequential_cif(h[b], alpha[b], keep_tail)
        assert lengths[b] == len(ref)
        for i, r in enumerate(ref):
            assert torch.allclose(out[b, i].double(), r, atol=1e-5), (b, i)
        assert durations[b, : len(ref)].tolist() == ref_durations
        assert (out[b, len(ref):] == 0).all()


@pytest.mark.parametrize("keep_tail", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_cif_equals_the_sequential_definition(seed, keep_tail):
    g = torch.Generator().manual_seed(seed)
    lengths = [37, 20, 5]
    h = torch.randn(3, 37, 4, generator=g)
    alpha = torch.rand(3, 37, generator=g)
    for b, n in enumerate(lengths):  # a padded batch: padded frames carry weight 0
        alpha[b, n:] = 0
    check_against_sequential(h, alpha, keep_tail)


def test_frames_that_cross_several_integers():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 9, 3, generator=g)
    alpha = torch.rand(2, 9, generator=g) * 3.5  # up to three integers crossed in one frame
    alpha[1, 6:] = 0
    check_against_sequential(h, alpha, keep_tail=True)
    check_against_sequential(h, alpha, keep_tail=False)


def test_lambda_zero_one_and_near_two():
    alpha = torch.rand(2, 30) * 0.5 + 0.1
    alpha[1, 20:] = 0
    h = torch.randn(2, 30, 4)
    _, lengths, _ = cif(h, scale_alpha(alpha, 0.0))
    assert lengths.tolist() == [30, 20]  # one output per input frame
    assert torch.equal(scale_alpha(alpha, 1.0), alpha)
    _, lengths, _ = cif(h, scale_alpha(alpha, 1.999), keep_tail=True)
    assert lengths.tolist() == [1, 1]  # one frame per utterance
    with pytest.raises(ValueError, match="lambda must be in"):
        scale_alpha(alpha, 2.0)


def test_alpha_predictor_is_zero_on_padding_and_in_0_1():
    predictor = AlphaPredictor(8)
    x = torch.randn(2, 12, 8)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 7:] = True
    alpha = predictor(x, padding)
    assert alpha.shape == (2, 12) and (alpha[1, 7:] == 0).all()
    assert ((alpha[~padding] > 0) & (alpha[~padding] < 1)).all()
    alpha.sum().backward()
    assert predictor.conv.weight.grad is not None
