"""SEW-D's compiled position-bias kernel: bit-identical to PyTorch's gathers, used by the model's
fp32 CPU forward, built once per source, compiler and CPU, and a warned fallback without a compiler."""

import warnings

import pytest
import torch

from sew_plugin.modules import position_bias
from sew_plugin.modules.disentangled_attention import RelativePositions

from conftest import waveform_batch
from helpers import tiny_sew_d


def gathered_bias(c2p, p2c, positions, padding):
    """The bias by indexing alone: c2p[g, h, i, index[i, j]] + p2c[g, h, j, index[i, j]]."""
    groups, heads, length, _ = c2p.shape
    index = positions.index.expand(groups, heads, length, length)
    bias = c2p.gather(-1, index) + p2c.gather(-1, index.transpose(-1, -2)).transpose(-1, -2)
    if padding is not None:
        bias = bias.masked_fill(padding[:, None, None, :], torch.finfo(torch.float32).min)
    return bias


@pytest.mark.parametrize("length", [1, 2, 33, 129, 300, 600])  # one frame; tile edges; log buckets; clamped ends
@pytest.mark.parametrize("padded", [False, True])
def test_kernel_equals_the_gathered_sum_bit_for_bit(length, padded):
    assert position_bias.library() is not None, position_bias.status()
    positions = RelativePositions(length, 256, 512, torch.device("cpu"))
    g = torch.Generator().manual_seed(length)
    c2p, p2c = (torch.randn(3, 2, length, positions.rows, generator=g) for _ in range(2))
    padding = None
    if padded:  # a whole utterance, one padded at its end, one with no frames
        padding = torch.arange(length)[None, :] >= torch.tensor([length, length // 2, 0])[:, None]
    bias = position_bias.position_bias(c2p, p2c, positions.rows_of, padding)
    assert bias.shape == (3, 2, length, length)
    assert torch.equal(bias, gathered_bias(c2p, p2c, positions, padding))


def test_the_model_uses_the_kernel_and_computes_what_the_gathers_compute(monkeypatch):
    model = tiny_sew_d(extractor_mode="layer_norm").eval()
    source, padding = waveform_batch([9000, 6730])
    calls = []
    kernel = position_bias.position_bias
    monkeypatch.setattr(position_bias, "position_bias", lambda *a: calls.append(1) or kernel(*a))
    with torch.no_grad():
        fused = model(source, padding_mask=padding, mask=False, features_only=True)["x"]
        assert len(calls) == len(model.encoder.encoder.layer)
        with position_bias.gathers():
            gathered = model(source, padding_mask=padding, mask=False, features_only=True)["x"]
    assert len(calls) == len(model.encoder.encoder.layer)
    assert torch.equal(fused, gathered)


def test_autograd_and_half_precision_keep_pytorchs_gathers():
    positions = RelativePositions(20, 256, 512, torch.device("cpu"))
    products = torch.randn(1, 2, 20, positions.rows)
    assert position_bias.applies(products)
    assert not position_bias.applies(products.requires_grad_())
    assert not position_bias.applies(products.detach().bfloat16())


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The kernel loaded anew (not this process's copy), with an empty build cache."""
    monkeypatch.setattr(position_bias, "_loaded", {})
    monkeypatch.setenv("SEW_PLUGIN_CACHE", str(tmp_path))
    return tmp_path


def test_built_once_per_cpu_and_reused(fresh, monkeypatch):
    compiler = position_bias.shutil.which("cc")
    first = position_bias._compile(compiler)
    built = first.stat().st_mtime_ns
    assert position_bias._compile(compiler) == first and first.stat().st_mtime_ns == built
    assert [p.name for p in fresh.iterdir()] == [first.name]  # no partial file left behind
    monkeypatch.setattr(position_bias, "_cpu_flags", lambda: "flags : another cpu")
    assert position_bias._compile(compiler) != first


def test_flags_a_compiler_refuses_fall_back_to_the_next_set(fresh, monkeypatch):
    monkeypatch.setattr(position_bias, "FLAG_SETS", (("-O3", "--no-such-flag-sew"), ("-O2",)))
    assert position_bias.library() is not None
    assert position_bias.status().startswith("compiled kernel")


def test_without_a_compiler_it_warns_once_and_the_model_still_runs(fresh, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-sew")
    with pytest.warns(RuntimeWarning, match="no C compiler \\(no-such-compiler-sew\\)"):
        assert position_bias.library() is None
    model = tiny_sew_d().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # said once
        assert position_bias.library() is None
        with torch.no_grad():
            x = model(waveform_batch([4000])[0], mask=False, features_only=True)["x"]
    assert torch.isfinite(x).all()
    assert position_bias.status().startswith("PyTorch gathers (no C compiler")
    assert list(fresh.iterdir()) == []


def test_turned_off_by_the_environment_without_a_warning(fresh, monkeypatch):
    monkeypatch.setenv("SEW_PLUGIN_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert position_bias.library() is None
    assert position_bias.status() == "PyTorch gathers (SEW_PLUGIN_KERNELS=0)"
