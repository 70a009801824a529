"""Input downsampling at fine-tuning time (paper 000): lengths, padding, the resampling filter's
frequency response, conv's resampling start, and the 2-frames-per-encoder-frame CTC head."""

import math

import pytest
import torch
from torch import nn

from conftest import waveform_batch
from sew_plugin.modules.input_downsample import (
    METHODS,
    InputDownsampler,
    expand_ctc_frames,
    expand_padding_mask,
    lowpass_filter,
)

FACTORS = (2, 3, 4)
# (kernel, padding) per method, as Zaiem et al. and the module's docstring give them.
GEOMETRY = {"conv": (161, 80), "avgpool": (10, 2), "resample": (161, 80)}
ALL = [(m, f) for m in METHODS for f in FACTORS]


@pytest.mark.parametrize("method,factor", ALL)
def test_output_lengths_match_tensors_and_formula(method, factor):
    down = InputDownsampler(method, factor)
    kernel, padding = GEOMETRY[method]
    lengths = [1601, 1234, 999, 640]
    source, mask = waveform_batch(lengths)
    with torch.no_grad():
        out, out_mask = down(source, mask)
        expected = [(n + 2 * padding - kernel) // factor + 1 for n in lengths]
        assert down.output_lengths(torch.tensor(lengths)).tolist() == expected
        assert out.size(1) == expected[0]
        assert (~out_mask).sum(1).tolist() == expected
        for n, e in zip(lengths, expected):
            assert down(torch.randn(1, n), None)[0].size(1) == e


@pytest.mark.parametrize("method,factor", ALL)
def test_padded_batch_equals_alone(method, factor):
    down = InputDownsampler(method, factor)
    lengths = [1200, 1013, 700]
    source, mask = waveform_batch(lengths)
    source = source.masked_fill(mask, 100.0)  # padding must not leak into any output
    with torch.no_grad():
        out, out_mask = down(source, mask)
        for b, n in enumerate(lengths):
            alone, alone_mask = down(source[b : b + 1, :n], None)
            assert alone_mask is None
            valid = alone.size(1)
            assert not out_mask[b, :valid].any() and out_mask[b, valid:].all()
            assert torch.allclose(out[b, :valid], alone[0], atol=1e-6)
            assert (out[b, valid:] == 0).all()


def test_lowpass_filter_shape_and_dc_gain():
    for factor in FACTORS:
        h = lowpass_filter(factor)
        assert h.shape == (161,) and h.dtype == torch.float32
        assert math.isclose(h.sum().item(), 1.0, abs_tol=1e-6)
        assert torch.equal(h, h.flip(0))


def tone_gain(down, hz, seconds=0.5, sample_rate=16000):
    """Amplitude ratio (out / in) of a sine tone, on the output's interior (no edge effects)."""
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    x = torch.sin(2 * math.pi * hz * t).float()[None]
    with torch.no_grad():
        y = down(x, None)[0][0]
    interior = y[100:-100].double()
    return (interior.pow(2).mean().sqrt() * math.sqrt(2)).item()


@pytest.mark.parametrize("factor,stop_hz", [(2, 6000), (3, 3500), (4, 3000)])
def test_resample_passes_1khz_and_stops_above_new_nyquist(factor, stop_hz):
    down = InputDownsampler("resample", factor)
    assert abs(tone_gain(down, 1000) - 1.0) < 0.01
    stop_db = 20 * math.log10(tone_gain(down, stop_hz))
    assert stop_db <= -40  # the requirement
    # A windowed 161-tap sinc reaches -85 dB or better here; an unwindowed one only -41 to -52 dB.
    assert stop_db <= -70


@pytest.mark.parametrize("factor", FACTORS)
def test_conv_starts_as_resample_and_trains(factor):
    conv, resample = InputDownsampler("conv", factor), InputDownsampler("resample", factor)
    assert list(resample.parameters()) == []
    assert torch.equal(dict(resample.named_buffers())["resample.lowpass"].flatten(), lowpass_filter(factor))
    assert "resample.lowpass" not in resample.state_dict()  # a function of the factor: not in checkpoints
    params = dict(conv.named_parameters())
    assert all(p.requires_grad for p in params.values())
    assert torch.equal(params["conv.weight"].flatten(), lowpass_filter(factor))
    assert (params["conv.bias"] == 0).all()

    source, mask = waveform_batch([900, 640])
    out, _ = conv(source, mask)
    with torch.no_grad():
        ref, _ = resample(source, mask)
    assert torch.allclose(out, ref, atol=1e-6)
    out.pow(2).sum().backward()
    assert params["conv.weight"].grad.abs().sum() > 0 and params["conv.bias"].grad.abs() > 0


@pytest.mark.parametrize("factor", FACTORS)
def test_avgpool_is_torch_avgpool(factor):
    down = InputDownsampler("avgpool", factor)
    x = torch.randn(2, 777)
    out, out_mask = down(x, None)
    assert out_mask is None
    ref = nn.AvgPool1d(10, stride=factor, padding=2)(x[:, None])[:, 0]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("method,factor", [("pool", 2), ("", 2), ("Conv", 2)])
def test_bad_method_names_config_key(method, factor):
    with pytest.raises(ValueError, match=r"model\.input_downsample="):
        InputDownsampler(method, factor)


@pytest.mark.parametrize("factor", [0, 1, 5, 8])
def test_bad_factor_names_config_key(factor):
    with pytest.raises(ValueError, match=r"model\.input_downsample_factor="):
        InputDownsampler("resample", factor)


def test_expand_ctc_frames_order():
    # T=2, B=2, frames=2, V=3: entry = 100*t + 10*b + (k*V + v) for output block k.
    t, b, c = torch.meshgrid(torch.arange(2), torch.arange(2), torch.arange(6), indexing="ij")
    logits = (100 * t + 10 * b + c).float()
    out = expand_ctc_frames(logits, 2)
    assert out.shape == (4, 2, 3)
    assert out[:, 0].tolist() == [[0, 1, 2], [3, 4, 5], [100, 101, 102], [103, 104, 105]]
    assert out[:, 1].tolist() == [[10, 11, 12], [13, 14, 15], [110, 111, 112], [113, 114, 115]]
    with pytest.raises(ValueError, match="multiple"):
        expand_ctc_frames(torch.zeros(2, 1, 7), 2)


def test_expand_padding_mask():
    mask = torch.tensor([[False, False, True], [False, True, True]])
    assert expand_padding_mask(mask, 2).tolist() == [
        [False, False, False, False, True, True],
        [False, False, True, True, True, True],
    ]
    assert expand_padding_mask(None, 2) is None
