"""Products with their GELU fused in bf16 on the CPU (``modules.fused_gelu``): within one bf16 rounding
of fp32 arithmetic, used by SEW-D's feed-forward and the extractor's norm-less blocks in bf16 only
(``sew bench`` counts their MACs like the unfused products': test_bench)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sew_plugin.inference.precision import set_precision
from sew_plugin.modules import fused_gelu

from conftest import waveform_batch
from helpers import tiny_sew_d


class FusedCalls(TorchDispatchMode):
    """The names of the fused oneDNN products run inside."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "pointwise" in func.name():
            self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_linear_gelu_is_fp32_arithmetic_rounded_once():
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 256).to(torch.bfloat16)
    x = torch.randn(3, 37, 64, generator=g).bfloat16()
    with torch.no_grad():
        fused = fused_gelu.linear_gelu(linear, x).float()
        exact = F.gelu(F.linear(x.float(), linear.weight.float(), linear.bias.float()))
        separate = F.gelu(linear(x)).float()
    assert fused.shape == (3, 37, 256)
    # the fused GELU sees the unrounded sum: at most one bf16 rounding from fp32 arithmetic
    assert ((fused - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()
    assert (fused - exact).abs().mean() <= (separate - exact).abs().mean()


def test_conv_gelu_is_fp32_arithmetic_rounded_once():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, 1, 101, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(96, 48, 1, 3, generator=g) * 0.1).bfloat16()
    bias = torch.randn(96, generator=g).bfloat16()
    with torch.no_grad():
        fused = fused_gelu.conv2d_gelu(x, weight, bias, (1, 2), 1).float()
        exact = F.gelu(F.conv2d(x.float(), weight.float(), bias.float(), stride=(1, 2)))
    assert fused.shape == (2, 96, 1, 50)
    assert ((fused - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_sew_d_fuses_in_bf16_only_and_stays_close_to_fp32(dtype):
    reference = tiny_sew_d().eval()  # the GroupNorm front end: its norm-less blocks after the first fuse
    model = tiny_sew_d().eval()
    model.load_state_dict(reference.state_dict())
    set_precision(model, dtype)
    source, _ = waveform_batch([6000])
    with torch.no_grad(), FusedCalls() as calls:
        got = model(source, mask=False, features_only=True)["x"].float()
    with torch.no_grad():
        want = reference(source, mask=False, features_only=True)["x"]
    layers = len(model.encoder.encoder.layer)
    # the norm-less blocks in bf16: all but the waveform's, and those precision keeps fp32 (is_narrow)
    bf16_blocks = sum(block[0].weight.dtype == torch.bfloat16 for block in model.feature_extractor.conv_layers)
    if dtype == "bf16":
        assert calls.names.count("mkldnn::_linear_pointwise") == layers  # each feed-forward's input product
        assert calls.names.count("mkldnn::_convolution_pointwise") == bf16_blocks > 0
        assert (got - want).abs().max() < 0.05 * want.abs().max()
    else:
        assert calls.names == [] and torch.equal(got, want)


def test_autograd_keeps_the_separate_gelu():
    linear = torch.nn.Linear(8, 16).to(torch.bfloat16)
    x = torch.randn(4, 8).bfloat16()
    with FusedCalls() as calls:
        y = fused_gelu.linear_gelu(linear, x)
    y.float().sum().backward()
    assert calls.names == [] and linear.weight.grad is not None
    assert not fused_gelu.applies(x.float()) and not fused_gelu.applies(x.half())
