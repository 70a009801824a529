"""CIF (paper 003): the vectorised integrate-and-fire against a frame-by-frame one written here."""

import math

import pytest
import torch

from sew_plugin.modules.cif import AlphaPredictor, cif, guidance_loss, rate_loss, scale_alpha, upsample_by_durations


def sequential_cif(h, alpha, keep_tail=False, min_frames=1):
    """One utterance, one frame at a time: accumulate, fire at each integer, split the crossing frame.
    Each frame lasts in the output that took most of it (the first on a tie), each output at least 1."""
    outputs, owners = [], []
    acc, weight = torch.zeros(h.size(-1), dtype=torch.float64), 0.0
    for t in range(h.size(0)):
        a, x = float(alpha[t]), h[t].double()
        first_output, first_part = len(outputs), min(a, 1.0 - weight)
        while weight + a >= 1.0:  # this frame completes the current output
            part = 1.0 - weight
            outputs.append(acc + part * x)
            a -= part
            acc, weight = torch.zeros_like(acc), 0.0
        acc, weight = acc + a * x, weight + a
        if float(alpha[t]) > 0:
            owners.append(first_output if first_part >= a else len(outputs))
    if (keep_tail and weight >= 0.5) or (len(outputs) < min_frames and weight > 0):
        outputs.append(acc / weight)
    return outputs, [max(1, owners.count(i)) for i in range(len(outputs))]


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


def test_upsampling_by_durations_repeats_each_output():
    x = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [0.0]]])  # (B=2, L=3, 1), second has 2 outputs
    durations = torch.tensor([[2, 1, 3], [1, 2, 0]])
    out, lengths = upsample_by_durations(x, durations)
    assert lengths.tolist() == [6, 3]
    assert out[..., 0].tolist() == [[1, 1, 2, 3, 3, 3], [4, 5, 5, 0, 0, 0]]


def test_upsampled_cif_output_covers_the_input_frames():
    """Repeating CIF outputs by their durations gives one frame per integrated input frame (a frame
    split between two outputs counts in both)."""
    torch.manual_seed(1)
    alpha = torch.rand(3, 40) * 0.6
    alpha[1, 30:] = 0  # padding
    out, lengths, durations = cif(torch.randn(3, 40, 4), alpha, keep_tail=True)
    up, up_lengths = upsample_by_durations(out, durations)
    assert torch.equal(up_lengths, durations.sum(1))
    assert (up_lengths >= lengths).all() and up_lengths[1] <= 30 + lengths[1]
    first = torch.repeat_interleave(out[0, : lengths[0]], durations[0, : lengths[0]], dim=0)
    assert torch.equal(up[0, : up_lengths[0]], first)


def test_rate_loss_is_the_distance_of_each_mean_alpha_to_the_target():
    alpha = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.3]])
    frames = torch.tensor([2, 3])
    assert rate_loss(alpha, frames, 0.25).item() == pytest.approx((0.25 + 0.05) / 2)


def test_guidance_loss_is_zero_exactly_at_one_output_per_segment():
    boundaries = torch.tensor([[2, 5, 6], [4, -1, -1]])  # segments [0,2) [2,5) [5,6) and [0,4)
    ideal = torch.tensor([[1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3, 1.0, 0.3], [0.25] * 4 + [0.0] * 3])
    assert guidance_loss(ideal, boundaries).item() == pytest.approx(0.0, abs=1e-6)
    shifted = ideal.clone()
    shifted[0, 1] += 0.5  # a segment integrating to 1.5: both frame and boundary terms see it
    frame_term = 0.5 / 10  # mean over the 10 segmented frames
    boundary_term = (0.5 + 0.5 + 0.5) / 4  # every later cumulative count is off by 0.5
    assert guidance_loss(shifted, boundaries).item() == pytest.approx(frame_term + boundary_term)


def test_alpha_losses_of_a_long_fp16_utterance_equal_float32():
    """fairseq's fp16 training runs the model in half precision: the running sum of a minute's alphas
    (hundreds) has a spacing of 0.25 in fp16, so the losses on it are computed in float32."""
    alpha = torch.rand(2, 3000, generator=torch.Generator().manual_seed(0)) * 0.5
    ends = torch.stack([torch.arange(3, 3001, 3), torch.arange(2, 2001, 2)])
    half = alpha.half()
    assert guidance_loss(half, ends).dtype == torch.float32
    assert guidance_loss(half, ends).item() == pytest.approx(guidance_loss(half.float(), ends).item(), rel=1e-5)
    frames = torch.tensor([3000, 2000])
    assert rate_loss(half, frames, 0.25).item() == pytest.approx(rate_loss(half.float(), frames, 0.25).item(), rel=1e-5)
