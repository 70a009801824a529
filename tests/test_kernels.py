"""The plugin's compiled C kernels (``modules.kernels``): built once per source, compiler and CPU,
refused flags remembered, a warned fallback without a compiler or a writable cache, a switch to turn
them off; and ``int8_rows.c``, whose quantization is bit-identical to ``Int8Linear``'s PyTorch path,
and oneDNN's int8 product with a packed weight, bit-identical to ``torch._int_mm``'s."""

import copy
import pickle
import warnings

import pytest
import torch

from sew_plugin.inference.precision import set_precision
from sew_plugin.modules import int8_linear, kernels, position_bias
from sew_plugin.modules.int8_linear import Int8Conv1d, Int8Linear

from conftest import waveform_batch
from helpers import tiny_sew_d


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The kernels loaded anew (not this process's copies), with an empty build cache."""
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setenv("SEW_PLUGIN_CACHE", str(tmp_path))
    return tmp_path


def build(name="position_bias"):
    """``_build`` of ``modules/{name}.c`` with this machine's compiler."""
    compiler = kernels.shutil.which(kernels.compiler_name())
    return kernels._build(kernels.FOLDER / f"{name}.c", compiler, kernels.compiler_version(compiler))


def test_built_once_per_source_and_cpu_and_reused(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "FLAG_SETS", (("-O2",),))
    first, flags = build()
    built = first.stat().st_mtime_ns
    assert build() == (first, ("-O2",)) and first.stat().st_mtime_ns == built
    assert [p.name for p in fresh.iterdir()] == [first.name]  # no partial file left behind
    assert first.stat().st_mode & 0o755 == 0o755  # loadable by the other users of a shared cache
    assert first.name.startswith("position_bias-") and build("int8_rows")[0].name.startswith("int8_rows-")
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: "flags : another cpu")
    assert build()[0] != first


def test_flags_a_compiler_refuses_fall_back_to_the_next_set_and_are_not_tried_again(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "FLAG_SETS", (("-O3", "--no-such-flag-sew"), ("-O2",)))
    assert position_bias.library() is not None
    assert position_bias.status().startswith("compiled kernel") and position_bias.status().endswith("; -O2)")
    refused, = fresh.glob("*.refused")
    assert "no-such-flag-sew" in refused.read_text()
    calls = []
    run = kernels.subprocess.run
    monkeypatch.setattr(kernels.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or run(cmd, **kw))
    assert build()[1] == ("-O2",)
    assert all("-shared" not in cmd for cmd in calls)  # nothing compiled again: the refusal and the build are read


def test_a_cached_build_that_no_longer_loads_is_built_again(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "FLAG_SETS", (("-O2",),))
    path, _ = build()
    path.write_bytes(b"not a shared library")
    assert position_bias.library() is not None
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_a_cache_that_cannot_be_written_falls_back_naming_it(fresh, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SEW_PLUGIN_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.warns(RuntimeWarning, match="SEW_PLUGIN_CACHE"):
        assert position_bias.library() is None


def test_without_a_compiler_each_kernel_warns_once_and_the_models_still_run(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-sew")
    with pytest.warns(RuntimeWarning, match="position bias falls back .* no C compiler \\(no-such-compiler-sew\\)"):
        assert position_bias.library() is None
    with pytest.warns(RuntimeWarning, match="int8 quantizes with PyTorch's operations.*no C compiler"):
        assert int8_linear.library() is None
    model = tiny_sew_d().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # said once
        assert position_bias.library() is None and int8_linear.library() is None
        with torch.no_grad():
            x = model(waveform_batch([4000])[0], mask=False, features_only=True)["x"]
            set_precision(model, "int8")
            y = model(waveform_batch([4000])[0], mask=False, features_only=True)["x"]
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert position_bias.status().startswith("PyTorch gathers (no C compiler")
    assert int8_linear.status().startswith("PyTorch operations (no C compiler")
    assert list(fresh.iterdir()) == []


def test_turned_off_by_the_environment_without_a_warning(fresh, monkeypatch):
    monkeypatch.setenv("SEW_PLUGIN_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert position_bias.library() is None and int8_linear.library() is None
    assert position_bias.status() == "PyTorch gathers (SEW_PLUGIN_KERNELS=0)"
    assert int8_linear.status() == "PyTorch operations (SEW_PLUGIN_KERNELS=0)"


def test_a_switch_other_than_0_or_1_is_refused_by_name(fresh, monkeypatch):
    monkeypatch.setenv("SEW_PLUGIN_KERNELS", "false")
    with pytest.raises(ValueError, match="SEW_PLUGIN_KERNELS='false': 0 turns"):
        position_bias.library()


@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_rows_kernel_computes_what_pytorchs_operations_compute_bit_for_bit(rows, bias, monkeypatch):
    assert int8_linear.library() is not None, int8_linear.status()
    g = torch.Generator().manual_seed(rows)
    layer = Int8Linear.from_linear(torch.nn.Linear(96, 40, bias=bias))
    x = torch.randn(rows, 96, generator=g) * torch.logspace(-3, 3, rows)[:, None]  # rows of very different scales
    x[0] = 0.0  # a silent frame: the smallest scale, all zeros
    compiled = layer(x)
    monkeypatch.setattr(int8_linear, "library", lambda: None)
    assert torch.equal(compiled, layer(x))
    assert torch.equal(compiled[0], layer.bias if bias else torch.zeros(40))


def test_int8_rows_kernel_quantizes_overlapping_windows_as_pytorchs_operations_do(monkeypatch):
    # an int8 convolution's windows are views of its input, stride * C_in values apart and overlapping
    assert int8_linear.library() is not None, int8_linear.status()
    layer = Int8Conv1d.from_conv(torch.nn.Conv1d(16, 24, kernel_size=3, stride=2))
    x = torch.randn(2, 16, 77) * torch.logspace(-2, 2, 77)  # frames of very different scales
    compiled = layer(x)
    monkeypatch.setattr(int8_linear, "library", lambda: None)
    assert torch.equal(compiled, layer(x))


needs_onednn_int8 = pytest.mark.skipif(not int8_linear.onednn_int8(),
                                       reason="oneDNN's packed int8 product runs on CPUs with VNNI only")


@needs_onednn_int8
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("rows", [1, 300])
def test_onednn_int8_products_give_what_torch_int_mm_gives_bit_for_bit(compiled, rows, monkeypatch):
    if not compiled:
        monkeypatch.setattr(int8_linear, "library", lambda: None)
    layer = Int8Linear.from_linear(torch.nn.Linear(96, 40))
    x = torch.randn(rows, 96) * torch.logspace(-3, 3, rows)[:, None]
    packed = layer(x)
    assert layer._packed is not None  # the product was oneDNN's
    monkeypatch.setattr(int8_linear, "onednn_int8", lambda: False)
    assert torch.equal(packed, layer(x))


@needs_onednn_int8
def test_an_int8_layer_copies_without_its_packed_weight_and_packs_again_after_a_change():
    linear = torch.nn.Linear(32, 8)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(5, 32)
    out = layer(x)
    twin = copy.deepcopy(layer)  # oneDNN's packed tensors have no storage to copy
    assert twin._packed is None and torch.equal(twin(x), out)
    twin.compile()  # and what nn.Module leaves out of a copy stays out (torch.compile's wrapper)
    assert pickle.loads(pickle.dumps(twin))._packed is None
    with torch.no_grad():
        layer.weight_int8.neg_()  # a write bumps the version counter: packed again
    assert torch.allclose(layer(x), 2 * layer.bias - out, atol=1e-5)


def test_int8_rows_kernel_keeps_a_non_finite_row_non_finite_and_the_others_exact(monkeypatch):
    layer = Int8Linear.from_linear(torch.nn.Linear(32, 8))
    x = torch.randn(4, 32)
    x[1, 5], x[2, 7] = float("nan"), float("inf")
    compiled = layer(x)
    monkeypatch.setattr(int8_linear, "library", lambda: None)
    fallback = layer(x)
    assert not torch.isfinite(compiled[1:3]).any() and not torch.isfinite(fallback[1:3]).any()
    assert torch.equal(compiled[[0, 3]], fallback[[0, 3]])


def test_int8_layers_whose_buffers_were_cast_keep_pytorchs_operations():
    # the kernel reads fp32 scales and biases: after a cast to bf16 the layer computes with PyTorch
    linear = torch.nn.Linear(32, 8)
    layer = Int8Linear.from_linear(linear).to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.bfloat16
    x = torch.randn(5, 32)
    out = layer(x)
    assert torch.isfinite(out).all() and (out - linear(x)).abs().max() < 0.05 * linear(x).abs().max()
