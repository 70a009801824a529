"""SEW-D's compiled position-bias kernels: the fp32 bias bit-identical to PyTorch's gathers, the bf16
attention's probabilities within one bf16 rounding of fp32 arithmetic on the same inputs, both used by
the model's CPU forward; built once per source, compiler and CPU, and a warned fallback without a compiler."""

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


def test_autograd_and_fp16_keep_pytorchs_gathers():
    positions = RelativePositions(20, 256, 512, torch.device("cpu"))
    products = torch.randn(1, 2, 20, positions.rows)
    assert position_bias.applies(products) and position_bias.applies(products.bfloat16())
    assert not position_bias.applies(products.half())
    assert not position_bias.applies(products.requires_grad_())


def bf16_inputs(length, dim, seed, groups=3, heads=2, max_position=512):
    """Q, K, V, the two (H, d, rows) tables and a padding of ``groups`` utterances: a whole one, one
    padded from half its length, one with no frames (where present), all bf16."""
    positions = RelativePositions(length, 256, max_position, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(groups, heads, length, dim, generator=g).bfloat16() for _ in range(3))
    tables = [torch.randn(heads, dim, positions.rows, generator=g).bfloat16() for _ in range(2)]
    padding = torch.arange(length)[None, :] >= torch.tensor([length, length // 2, 0][:groups])[:, None]
    return positions, q, k, v, tables, padding


def probabilities_in_fp32(q, k, tables, positions, padding):
    """softmax(Q.K + c2p + p2c) in fp32 arithmetic from the bf16 products the kernel is handed
    (PyTorch's bf16 products of the same tensors)."""
    c2p, p2c = (torch.matmul(x, t).float() for x, t in ((q, tables[0]), (k, tables[1])))
    scores = torch.matmul(q, k.transpose(-1, -2)).float()
    groups, heads, length, _ = q.shape
    index = positions.index.expand(groups, heads, length, length)
    biased = scores + c2p.gather(-1, index) + p2c.gather(-1, index.transpose(-1, -2)).transpose(-1, -2)
    return biased.masked_fill(padding[:, None, None, :], torch.finfo(torch.float32).min).softmax(-1)


# one frame; tile edges; log buckets; whole tiles of 32 queries with keys left over. With max_position
# 256 the log buckets grow by two rows between neighbouring distances: the kernel reads its tables
# row by row there, and 32 neighbours' rows at once (AVX-512) where each step is one row at most
@pytest.mark.parametrize("length, max_position", [(1, 512), (2, 512), (33, 512), (129, 512), (200, 512),
                                                  (200, 256), (97, 512)])
def test_bf16_probabilities_are_fp32_arithmetics_rounded_once(length, max_position):
    # V the identity (d = L): the output is the probabilities themselves, exactly
    positions, q, k, _, tables, padding = bf16_inputs(length, length, seed=length, max_position=max_position)
    if max_position == 256:
        assert (positions.rows_of.diff().abs() == 2).any()
    identity = torch.eye(length).bfloat16().expand(3, 2, length, length).contiguous()
    probabilities = position_bias.attention(q, k, identity, *tables, positions.rows_of, padding).float()
    expected = probabilities_in_fp32(q, k, tables, positions, padding)
    assert probabilities.shape == (3, 2, length, length)
    # within one bf16 rounding (2^-8 relative) of the fp32 probabilities
    assert ((probabilities - expected).abs() <= expected * 2**-8 + 1e-30).all()
    if length > 1:  # padded keys get nothing
        assert torch.equal(probabilities[1][..., length // 2:], torch.zeros_like(probabilities[1][..., length // 2:]))
    assert torch.allclose(probabilities[2], torch.full_like(probabilities[2], 1 / length), rtol=2**-8)  # no frames


@pytest.fixture
def windows_off():
    """A function that turns the kernel's AVX-512 table windows off (``position_softmax_windows``) until
    the test ends: the tables gathered, as on CPUs without AVX-512."""
    import ctypes

    flag = ctypes.c_int.in_dll(position_bias.library(), "position_softmax_windows")
    yield lambda: setattr(flag, "value", 0)
    flag.value = 1


@pytest.mark.parametrize("length", [1, 31, 33, 97, 200, 600])  # partial tiles and key blocks; log buckets
def test_bf16_probabilities_read_in_windows_equal_the_gathered_ones_bit_for_bit(length, windows_off):
    positions, q, k, v, tables, padding = bf16_inputs(length, 64, seed=length)
    windows = position_bias.attention(q, k, v, *tables, positions.rows_of, padding)
    windows_off()
    gathered = position_bias.attention(q, k, v, *tables, positions.rows_of, padding)
    assert torch.equal(windows, gathered)


def test_rows_that_rise_between_distances_are_gathered():
    # rows_of 0, 1, 0, 1, ...: steps of one row, but not falling; a window from the last of 32
    # neighbours' rows would read the wrong entries (every step must fall by zero or one row)
    length = 64
    positions, q, k, _, tables, padding = bf16_inputs(length, length, seed=5)
    rows_of = (torch.arange(2 * length - 1) % 2).to(torch.int32)
    identity = torch.eye(length).bfloat16().expand(3, 2, length, length).contiguous()
    got = position_bias.attention(q, k, identity, *tables, rows_of, padding).float()
    i = torch.arange(length)
    index = rows_of.long()[length - 1 - i[:, None] + i[None, :]].expand(3, 2, length, length)
    c2p, p2c = (torch.matmul(x, t).float() for x, t in ((q, tables[0]), (k, tables[1])))
    biased = torch.matmul(q, k.transpose(-1, -2)).float() + c2p.gather(-1, index) \
        + p2c.gather(-1, index.transpose(-1, -2)).transpose(-1, -2)
    want = biased.masked_fill(padding[:, None, None, :], torch.finfo(torch.float32).min).softmax(-1)
    assert ((got - want).abs() <= want * 2**-8 + 1e-30).all()


def test_bf16_attention_of_a_long_utterance_and_extreme_scores():
    # 600 frames (log buckets and clamped ends), and scores spread over +-200: most probabilities
    # underflow to exactly 0, none is NaN, each row sums to 1 within bf16 rounding
    positions, q, k, v, tables, padding = bf16_inputs(600, 64, seed=1, groups=2)
    q = (q.float() * 20).bfloat16()
    out = position_bias.attention(q, k, v, *tables, positions.rows_of, padding)
    expected = probabilities_in_fp32(q, k, tables, positions, padding) @ v.float()
    assert torch.isfinite(out).all()
    assert (out.float() - expected).abs().max() <= 2**-7 * expected.abs().max()
    ones = torch.ones(2, 2, 600, 64).bfloat16()
    sums = position_bias.attention(q, k, ones, *tables, positions.rows_of, padding).float()
    assert ((sums - 1).abs() <= 2**-6).all()


def test_the_bf16_model_uses_the_attention_kernel_and_stays_close_to_the_gathers(monkeypatch):
    from sew_plugin.inference.precision import set_precision

    model = set_precision(tiny_sew_d(extractor_mode="layer_norm").eval(), "bf16")
    source, padding = waveform_batch([9000, 6730])
    calls = []
    kernel = position_bias.attention
    monkeypatch.setattr(position_bias, "attention", lambda *a: calls.append(a[0].dtype) or kernel(*a))
    with torch.no_grad():
        fused = model(source, padding_mask=padding, mask=False, features_only=True)["x"].float()
        assert calls == [torch.bfloat16] * len(model.encoder.encoder.layer)
        with position_bias.gathers():
            gathered = model(source, padding_mask=padding, mask=False, features_only=True)["x"].float()
        assert len(calls) == len(model.encoder.encoder.layer)  # not called inside gathers()
        alone = model(source[1:, :6730], mask=False, features_only=True)["x"].float()
    assert (fused - gathered).abs().max() <= 0.05 * gathered.abs().max()
    # a padded batch gives what each utterance gives alone, within the last bit of fp32 made into bf16
    # steps: the front end's fp32 GELU (PyTorch's vectorized loop with a scalar tail, whose place moves
    # with the tensor's size) can differ by one fp32 ulp, which a bf16 rounding may turn into one step
    assert (fused[1, : alone.size(1)] - alone[0]).abs().max() <= 2**-5 * alone.abs().max()  # 0-0.011 in 12 draws


def test_inputs_the_kernel_cannot_read_safely_are_refused():
    positions = RelativePositions(10, 256, 512, torch.device("cpu"))
    c2p = torch.randn(2, 1, 10, positions.rows)
    for bad, match in [
        (dict(p2c=c2p[:1]), "p2c: expected torch.float32 CPU products of shape"),
        (dict(p2c=c2p.double()), "p2c: expected torch.float32"),
        (dict(rows_of=positions.rows_of.long()), "rows_of: expected \\(19,\\) int32"),
        (dict(rows_of=positions.rows_of + positions.rows), "rows_of: rows outside"),
        (dict(key_padding_mask=torch.zeros(1, 10, dtype=torch.bool)), "key_padding_mask: expected bool \\(2, 10\\)"),
        (dict(key_padding_mask=torch.zeros(2, 10, dtype=torch.long)), "key_padding_mask: expected bool"),
    ]:
        args = dict(c2p=c2p, p2c=c2p.clone(), rows_of=positions.rows_of, key_padding_mask=None) | bad
        with pytest.raises(ValueError, match=match):
            position_bias.position_bias(**args)
    q = torch.randn(2, 1, 10, 4).bfloat16()
    tables = torch.randn(1, 4, positions.rows).bfloat16()
    for bad, match in [
        (dict(k=q[:, :, :9]), "k: expected torch.bfloat16 CPU activations of shape \\(2, 1, 10, 4\\)"),
        (dict(v=q.float()), "v: expected torch.bfloat16"),
        (dict(pos_query_t=tables[..., :-1]), "pos_query_t: expected torch.bfloat16 CPU tables"),
        (dict(rows_of=positions.rows_of - 1), "rows_of: rows outside"),
    ]:
        args = dict(q=q, k=q, v=q, pos_key_t=tables, pos_query_t=tables, rows_of=positions.rows_of,
                    key_padding_mask=None) | bad
        with pytest.raises(ValueError, match=match):
            position_bias.attention(**args)

def test_gathers_blocks_nest():
    products = torch.randn(1, 1, 4, 7)
    with position_bias.gathers():
        with position_bias.gathers():
            pass
        assert not position_bias.applies(products)
    assert position_bias.applies(products)
