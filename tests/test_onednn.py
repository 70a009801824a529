"""oneDNN's bf16 inference kernels on the CPU (``modules.onednn``): linear weights packed once
(``PackedLinear``, the plain product's results), products with their GELU fused (within one bf16
rounding of fp32 arithmetic), used in bf16 only but for the packed weights of SEW-D's transformer in
fp32 (``sew bench`` counts their MACs like the plain products': test_bench)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sew_plugin.inference.precision import set_precision
from sew_plugin.modules import onednn

from conftest import waveform_batch
from helpers import OpNames, tiny_sew_d

# CPUs without AVX-512 (oneDNN computes no bf16 there): the plain products and separate GELU run
ONEDNN = onednn.available()
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="oneDNN has no bf16 kernels on this CPU: PyTorch's own run")


class FusedCalls(TorchDispatchMode):
    """The oneDNN kernels and PyTorch's linear products (``aten::addmm``) run inside: names, a oneDNN
    linear product's with what it fuses (``:gelu``, ``:none``)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith("mkldnn::") or name == "aten::addmm":
            self.names.append(f"{name}:{args[3]}" if name == "mkldnn::_linear_pointwise" else name)
        return func(*args, **(kwargs or {}))


@needs_onednn
def test_linear_gelu_is_fp32_arithmetic_rounded_once():
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 256).to(torch.bfloat16)
    x = torch.randn(3, 37, 64, generator=g).bfloat16()
    with torch.no_grad():
        fused = onednn.linear_gelu(linear, x).float()
        exact = F.gelu(F.linear(x.float(), linear.weight.float(), linear.bias.float()))
        separate = F.gelu(linear(x)).float()
    assert fused.shape == (3, 37, 256)
    # the fused GELU sees the unrounded sum: at most one bf16 rounding from fp32 arithmetic
    assert ((fused - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()
    assert (fused - exact).abs().mean() <= (separate - exact).abs().mean()


@needs_onednn
def test_conv_gelu_is_fp32_arithmetic_rounded_once():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, 1, 101, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(96, 48, 1, 3, generator=g) * 0.1).bfloat16()
    bias = torch.randn(96, generator=g).bfloat16()
    with torch.no_grad():
        fused = onednn.conv2d_gelu(x, weight, bias, (1, 2), 1).float()
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
        if ONEDNN:
            assert calls.names.count("mkldnn::_linear_pointwise:gelu") == layers  # each feed-forward's input product
            # every other linear product on its packed weight (packed at the first product: the
            # heads that features_only does not reach never pack)
            assert calls.names.count("mkldnn::_linear_pointwise:none") > 0 and "aten::addmm" not in calls.names
            assert calls.names.count("mkldnn::_convolution_pointwise") == bf16_blocks > 0
            assert model.final_proj._packed is None and model.encoder.encoder.layer[0].output.dense._packed is not None
            with torch.no_grad(), FusedCalls() as again:
                model(source, mask=False, features_only=True)
            assert "mkldnn::_reorder_linear_weight" not in again.names  # packed once, not at every forward
        else:
            assert "aten::addmm" in calls.names and not any(n.startswith("mkldnn::") for n in calls.names)
        assert (got - want).abs().max() < 0.05 * want.abs().max()
    elif ONEDNN:  # the transformer's products on packed fp32 weights, unfused: fp32 rounding apart
        assert calls.names.count("mkldnn::_linear_pointwise:none") >= 6 * layers
        assert not any(n.endswith(":gelu") or n == "mkldnn::_convolution_pointwise" for n in calls.names)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    else:
        assert set(calls.names) == {"aten::addmm"} and torch.equal(got, want)


def test_autograd_keeps_the_separate_gelu():
    linear = torch.nn.Linear(8, 16).to(torch.bfloat16)
    x = torch.randn(4, 8).bfloat16()
    with FusedCalls() as calls:
        y = onednn.linear_gelu(linear, x)
    y.float().sum().backward()
    assert calls.names == ["aten::addmm"] and linear.weight.grad is not None
    assert not onednn.applies(x.float()) and not onednn.applies(x.half())


def test_packed_linear_computes_the_plain_product_on_a_weight_packed_once():
    g = torch.Generator().manual_seed(2)
    plain = torch.nn.Linear(64, 96).to(torch.bfloat16)
    packed = onednn.PackedLinear(plain)
    assert packed.weight is plain.weight and packed.bias is plain.bias  # shared: one state dict, same names
    x = torch.randn(2, 37, 64, generator=g).bfloat16()
    strided = torch.randn(37, 2, 64, generator=g).bfloat16().transpose(0, 1)
    with torch.no_grad(), FusedCalls() as calls:
        got, got_strided = packed(x), packed(strided)
    if ONEDNN:  # packed at the first product, not again at the second
        assert calls.names == ["mkldnn::_reorder_linear_weight"] + ["mkldnn::_linear_pointwise:none"] * 2
    else:
        assert not any(name.startswith("mkldnn::") for name in calls.names)
    for data, result in ((x, got), (strided, got_strided)):
        # oneDNN may split a sum differently than PyTorch's product: fp32 arithmetic up to bf16 roundings
        exact = F.linear(data.float(), plain.weight.float(), plain.bias.float())
        scale = F.linear(data.float().abs(), plain.weight.float().abs(), plain.bias.float().abs())
        assert ((result.float() - exact).abs() <= scale * 2**-7).all()
    assert got.shape == got_strided.shape == (2, 37, 96)


def small_packed_linear():
    """A (16 -> 8) bf16 ``nn.Linear``, its ``PackedLinear`` and a (5, 16) input."""
    plain = torch.nn.Linear(16, 8).to(torch.bfloat16)
    return plain, onednn.PackedLinear(plain), torch.randn(5, 16).bfloat16()


def test_packed_linear_packs_again_when_its_weight_changes():
    plain, packed, x = small_packed_linear()
    with torch.no_grad():
        before = packed(x)
        plain.weight.mul_(2)  # in place, as load_state_dict writes
        assert torch.equal(packed(x), plain(x)) and not torch.equal(packed(x), before)
        packed.weight = torch.nn.Parameter(torch.randn(8, 16).bfloat16())  # another tensor
        assert torch.equal(packed(x), F.linear(x, packed.weight, packed.bias))
        packed.float()  # a cast or move drops the packed copy; its storage is the weight's no more
        assert packed._packed is None
        packed.bfloat16()
        assert torch.equal(packed(x), F.linear(x, packed.weight, packed.bias))
        packed.weight.data = packed.weight.data * 3  # a storage swapped in (no version bump)
        assert torch.equal(packed(x), F.linear(x, packed.weight, packed.bias))
        packed.weight.data.mul_(-1)  # written past the version counter: repack() says so
        packed.repack()
        assert torch.equal(packed(x), F.linear(x, packed.weight, packed.bias))


def test_packed_linear_copies_and_falls_back_where_the_kernels_do_not_apply():
    import copy
    import io

    plain, packed, x = small_packed_linear()
    with torch.no_grad():
        want = plain(x)
        buffer = io.BytesIO()
        torch.save(packed, buffer)  # mkldnn tensors have no storage: copies pack again
        assert torch.equal(copy.deepcopy(packed)(x), want)
        assert torch.equal(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)(x), want)
    with FusedCalls() as calls:  # autograd: PyTorch's product, gradients reach the shared weight
        packed(x).float().sum().backward()
    assert calls.names == ["aten::addmm"] and plain.weight.grad is not None
    fp32 = onednn.PackedLinear(torch.nn.Linear(16, 8))
    with torch.no_grad(), FusedCalls() as calls:  # an fp32 weight multiplies fp32 input packed too
        got = fp32(x.float())
    assert calls.names[-1] == ("mkldnn::_linear_pointwise:none" if ONEDNN else "aten::addmm")
    assert torch.allclose(got, F.linear(x.float(), fp32.weight, fp32.bias), rtol=1e-5, atol=1e-6)


@needs_onednn
def test_fp32_packed_products_leave_autocast_its_format_and_inference_tensors_alone():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    onednn.pack_linear_layers(model, torch.float32)
    x = torch.randn(5, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # autocast's product, as the plain layer's
    with torch.no_grad():
        assert model(x).dtype == torch.float32 and model[0]._packed is not None
    with torch.inference_mode():
        made_here = torch.nn.Sequential(torch.nn.Linear(16, 8))
    assert onednn.pack_linear_layers(made_here, torch.float32) == 0  # would be packed at every product


def stacked_layers(seed: int = 3):
    """Three bf16 (64 -> 48) ``nn.Linear`` layers and a (2, 37, 64) input."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(64, 48).to(torch.bfloat16) for _ in range(3)]
    return layers, torch.randn(2, 37, 64, generator=g).bfloat16()


@needs_onednn
def test_stacked_linear_computes_each_product_and_stacks_again_when_a_weight_changes():
    import copy

    layers, x = stacked_layers()
    stacked = onednn.StackedLinear()
    with torch.no_grad(), FusedCalls() as calls:
        got = stacked.product(layers, x)
        stacked.product(layers, x)
    assert calls.names == ["mkldnn::_reorder_linear_weight"] + ["mkldnn::_linear_pointwise:none"] * 2  # stacked once

    def check(result):
        for layer, part in zip(layers, result.split(48, -1)):  # fp32 arithmetic up to bf16 roundings, as PackedLinear
            exact = F.linear(x.float(), layer.weight.float(), layer.bias.float())
            scale = F.linear(x.float().abs(), layer.weight.float().abs(), layer.bias.float().abs())
            assert ((part.float() - exact).abs() <= scale * 2**-7).all()

    assert got.shape == (2, 37, 144)
    check(got)
    with torch.no_grad():
        layers[1].weight.mul_(-2)  # in place, as load_state_dict writes: stacked again
        again = stacked.product(layers, x)
        assert not torch.equal(again, got)
        check(again)
        assert torch.equal(copy.deepcopy(stacked).product(layers, x), again)  # a copy stacks its own
        layers[2].bias = torch.nn.Parameter(torch.randn(48).bfloat16())  # another tensor: stacked again
        check(stacked.product(layers, x))
        layers[0].weight.data = layers[0].weight.data * 3  # a storage swapped in (no version bump)
        check(stacked.product(layers, x))


@needs_onednn
def test_stacked_linear_applies_to_bf16_inference_products_that_fit_its_bound(monkeypatch):
    layers, x = stacked_layers()
    stacked = onednn.StackedLinear()
    assert stacked.product(layers, x) is None  # autograd: the layers' own products
    with torch.no_grad():
        assert stacked.product(layers, x) is not None
        assert stacked.product(layers, x.float()) is None  # fp32 input
        assert stacked.product([torch.nn.Linear(64, 48).float()] * 3, x.float()) is None  # fp32 layers
        assert stacked.product(layers[:2] + [torch.nn.Linear(64, 48, bias=False).bfloat16()], x) is None
        hook = layers[0].register_forward_hook(lambda *args: None)  # a hook must see its layer's product
        assert stacked.product(layers, x) is None
        hook.remove()
        assert stacked.product(layers, x) is not None
        monkeypatch.setattr(onednn.StackedLinear, "MAX_BYTES", 2 * 37 * 144 * 2 - 1)  # one byte short
        assert stacked.product(layers, x) is None


@needs_onednn
def test_sew_d_projects_its_attention_inputs_as_one_product_in_bf16(monkeypatch):
    model = tiny_sew_d().eval()
    set_precision(model, "bf16")
    source, _ = waveform_batch([6000])
    layers = len(model.encoder.encoder.layer)
    with torch.no_grad():
        model(source, mask=False, features_only=True)  # the position tables, projected once
        with FusedCalls() as stacked:
            got = model(source, mask=False, features_only=True)["x"].float()
        monkeypatch.setattr(onednn.StackedLinear, "MAX_BYTES", 0)  # each projection on its own
        with FusedCalls() as alone:
            separate = model(source, mask=False, features_only=True)["x"].float()
    products = [calls.names.count("mkldnn::_linear_pointwise:none") for calls in (stacked, alone)]
    assert products[1] - products[0] == 2 * layers  # three products per layer became one
    assert (got - separate).abs().max() <= 2**-7 * separate.abs().max()


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "int8"])
def test_bf16_packs_every_linear_layer_and_fp32_those_of_sew_ds_transformer(dtype):
    model = tiny_sew_d().eval()
    names = list(model.state_dict())
    set_precision(model, dtype)
    packed = [m for m in model.modules() if isinstance(m, onednn.PackedLinear)]
    if dtype == "bf16" and ONEDNN:
        assert len(packed) == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) > 0
    elif dtype == "fp32" and ONEDNN:
        encoder = model.encoder.encoder
        assert packed and all(any(m is p for p in encoder.modules()) for m in packed)
        assert len(packed) == sum(isinstance(m, torch.nn.Linear) for m in encoder.modules())
        assert not isinstance(model.final_proj, onednn.PackedLinear)  # outside the transformer: as it was
    else:
        assert packed == []
    assert all(m._packed is None for m in packed)  # packed at their first product, not before
    assert not any(m.training for m in model.modules())
    if dtype != "int8":  # int8 stores its own buffers
        assert list(model.state_dict()) == names


def test_fp32_gelu_runs_in_place_on_the_product_without_autograd():
    linear = torch.nn.Linear(16, 32)
    x = torch.randn(7, 16)
    with torch.no_grad(), OpNames() as ops:
        got = onednn.linear_gelu(linear, x)
    with torch.no_grad():
        assert torch.equal(got, F.gelu(linear(x)))  # bit-identical
    assert "aten::gelu_" in ops.names and "aten::gelu" not in ops.names  # no second (7, 32) tensor
    with OpNames() as ops:
        onednn.linear_gelu(linear, x).sum().backward()  # autograd keeps the product for the gradient
    assert "aten::gelu" in ops.names and "aten::gelu_" not in ops.names and linear.weight.grad is not None


def test_a_linear_layer_registered_twice_becomes_one_packed_layer():
    shared = torch.nn.Linear(8, 8).to(torch.bfloat16)
    model = torch.nn.Sequential(shared, torch.nn.GELU(), shared)
    swapped = onednn.pack_linear_layers(model)
    assert swapped == (1 if ONEDNN else 0) and model[0] is model[2]


def test_a_hook_on_the_feed_forward_product_sees_it_before_its_gelu():
    linear = torch.nn.Linear(16, 32)
    seen = []
    linear.register_forward_hook(lambda module, args, output: seen.append(output))  # held, not copied
    x = torch.randn(7, 16)
    with torch.no_grad():
        got = onednn.linear_gelu(linear, x)
        product = F.linear(x, linear.weight, linear.bias)
        assert torch.equal(seen[0], product) and torch.equal(got, F.gelu(product))


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_sew_d_converts_and_runs_inside_inference_mode(dtype):
    """Weights made under ``torch.inference_mode`` have no version counter: the caches keyed on
    weights (packed weights, projected position tables) key them by storage alone."""
    source, _ = waveform_batch([6000])
    other = tiny_sew_d().eval()  # other weights (another random draw)
    with torch.inference_mode():
        model = tiny_sew_d().eval()
        reference = model(source, mask=False, features_only=True)["x"]
        set_precision(model, dtype)
        first = model(source, mask=False, features_only=True)["x"].float()
        again = model(source, mask=False, features_only=True)["x"].float()
        # weights written in place where no version counter tells it: nothing cached on them is reused
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in other.state_dict().items()})
        loaded = model(source, mask=False, features_only=True)["x"].float()
        set_precision(other, dtype)
        want = other(source, mask=False, features_only=True)["x"].float()
    assert torch.equal(first, again) and (first - reference).abs().max() < 0.05 * reference.abs().max()
    assert torch.equal(loaded, want) and not torch.equal(loaded, first)
