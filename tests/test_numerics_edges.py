"""Numerics at the edges (issue 10), over every model family this plugin builds, in eval mode:

- 60 s of 16 kHz audio, alone and in a padded batch: finite, the expected number of frames;
- the shortest inputs: one 20 ms frame (400 samples, the WFE-C receptive field) and one frame after
  the squeeze, alone and in a padded batch, alone equal to in the batch;
- inputs shorter than the receptive field: a ``ValueError`` naming the minimum number of samples;
- bf16 autocast on CPU: finite and close to fp32;
- a padded batch with an all-padding row (or a row shorter than the receptive field): that row is
  padding everywhere (its outputs are zeros for squeezed encoders, finite values under a fully
  True padding mask otherwise), never NaN, and the other rows equal their alone-forward.

Models are tiny (``TINY_SEW``) with ``extractor_mode=layer_norm`` (the default GroupNorm front end
normalises over the padded length, as wav2vec 2.0 does, so only this mode is padding-exact), and
every bias and norm parameter is moved off its zero/one initialisation, so no output is zero just
because a fresh model's biases are.
"""

import functools

import pytest
import torch

import sew_plugin.models  # noqa: F401
from sew_plugin.modules.side_outputs import collecting
from sew_plugin.modules.feature_extractor import output_frames
from sew_plugin.models.sew import SEWConfig
from sew_plugin.models.sew_ctc import SEWCtc
from sew_plugin.models.sew_d import SEWDConfig
from sew_plugin.models.st_sew import StSEWConfig

from conftest import TINY_SEW, waveform_batch
from helpers import tiny_cif, tiny_ctc, tiny_sew, tiny_sew_d, tiny_st_sew

SR = 16000
RECEPTIVE_FIELD = 400  # WFE-C (and WFE-O): samples for the first 20 ms frame
LN = dict(extractor_mode="layer_norm")


# ---- the model table -------------------------------------------------------------------------

# name -> (builder, squeeze factor of the encoder (None: CIF), input downsampling factor)
MODELS = {
    "sew_s1": (lambda: tiny_sew(squeeze_factor=1, **LN), 1, 1),
    "sew_s2": (lambda: tiny_sew(squeeze_factor=2, **LN), 2, 1),
    "sew_d_s2": (lambda: tiny_sew_d(squeeze_factor=2, **LN), 2, 1),
    "st_sew_111": (lambda: tiny_st_sew(operating_point="1,1,1", **LN), 1, 1),
    "st_sew_221": (lambda: tiny_st_sew(operating_point="2,2,1", **LN), 2, 1),
    "st_sew_222": (lambda: tiny_st_sew(operating_point="2,2,2", **LN), 2, 1),
    "cif": (lambda: tiny_cif(cif_lambda=1.0, **LN), None, 1),
    "ctc_sew_s2_exit1": (lambda: tiny_ctc(SEWConfig(**TINY_SEW, squeeze_factor=2, **LN), "sew", exit_layers="1"), 2, 1),
    "ctc_sew_d_s2_exit1": (lambda: tiny_ctc(SEWDConfig(**TINY_SEW, squeeze_factor=2, **LN), "sew_d", exit_layers="1",
                                            exit_head="mlp"), 2, 1),
    "ctc_st_sew_222_down2": (lambda: tiny_ctc(StSEWConfig(**TINY_SEW, **LN), "st_sew", operating_point="2,2,2",
                                              input_downsample="resample", input_downsample_factor=2), 2, 2),
    "ctc_cif": (lambda: tiny_ctc(SEWConfig(**TINY_SEW, squeeze_factor=1, compressor="cif", **LN), "sew", cif_lambda=1.0), None, 1),
}
NAMES = sorted(MODELS)


@functools.lru_cache(maxsize=None)
def model(name):
    torch.manual_seed(0)
    m = MODELS[name][0]().eval()
    with torch.no_grad():  # biases and norm parameters off their 0 / 1 initialisation
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


def is_ctc(m) -> bool:
    return isinstance(m, SEWCtc)


def pretraining_model(m):
    return m.w2v_encoder.w2v_model if is_ctc(m) else m


REPORTED = {}  # what the last ``run``'s forward reported (sew_plugin.modules.side_outputs)


def last_compression():
    """The CIF compression of the last ``run``."""
    return REPORTED["cif"]


def run(m, source, padding=None):
    """-> (B, T, D or V) outputs, (B,) valid frames, {exit layer: (B, T, V)} (CTC with exits)."""
    REPORTED.clear()
    with torch.no_grad(), collecting() as reported:
        if is_ctc(m):
            out = m(source=source, padding_mask=padding)
            x, mask = out["encoder_out"].transpose(0, 1), out["padding_mask"]
            exits = {k: v.transpose(0, 1) for k, v in out.get("exit_logits", {}).items()}
        else:
            out = m(source, padding_mask=padding, mask=False, features_only=True)
            x, mask, exits = out["x"], out["padding_mask"], {}
    REPORTED.update(reported)
    valid = torch.full((x.size(0),), x.size(1)) if mask is None else (~mask).sum(1)
    return x, valid, exits


def expected_frames(name, m, samples):
    """Valid output frames for each (B,) waveform length: the feature extractor's (after input
    downsampling); for CIF, the compressed frames the model reports."""
    samples = torch.as_tensor(samples)
    if MODELS[name][2] > 1:
        samples = m.input_downsampler.output_lengths(samples)
    frames = output_frames(samples, pretraining_model(m).feature_extractor.layers)
    if MODELS[name][1] is None:
        cif = last_compression()
        compressed = cif.lengths  # CIF: compressed, at least one frame, at most T
        assert ((compressed >= (frames > 0).long()) & (compressed <= frames)).all(), (compressed, frames)
        if not is_ctc(m):
            return compressed
        # CTC on CIF: each compressed frame repeated by its duration, the 20 ms frames it took most
        # of: back to the 20 ms rate, give or take the tail below one firing and outputs owning none
        upsampled = cif.durations.sum(1)
        assert ((upsampled - frames).abs() <= 2 + frames // 50).all(), (upsampled, frames)
        return upsampled
    return frames


def min_samples(name):
    """The shortest waveform (samples) that gives the model one 20 ms frame."""
    return RECEPTIVE_FIELD * MODELS[name][2] - (MODELS[name][2] - 1)  # resample: (n - 1) // f + 1


def assert_same(a, b, atol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max() <= atol, (a - b).abs().max()


# ---- 1. sixty seconds ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_sixty_seconds_alone_and_in_a_padded_batch(name):
    m = model(name)
    lengths = [60 * SR, 3 * SR + 123]
    source, padding = waveform_batch(lengths)
    alone, alone_valid, _ = run(m, source[:1])
    assert torch.isfinite(alone).all()
    assert alone.size(1) == alone_valid[0] == expected_frames(name, m, lengths[:1])[0]
    if MODELS[name][1] is not None:
        samples = 60 * SR // MODELS[name][2]  # 960000, or 480000 after downsampling by 2
        assert alone.size(1) == (samples - RECEPTIVE_FIELD) // 320 + 1  # 2999 (1499) frames of 20 ms

    together, valid, exits = run(m, source, padding)
    assert torch.isfinite(together).all() and all(torch.isfinite(e).all() for e in exits.values())
    assert valid.tolist() == expected_frames(name, m, lengths).tolist()
    assert_same(together[0, : alone.size(1)], alone[0], atol=1e-4)
    short, _, _ = run(m, source[1:, : lengths[1]])
    assert_same(together[1, : short.size(1)], short[0], atol=1e-4)


# ---- 2. the shortest inputs ------------------------------------------------------------------

def shortest(name):
    """(one 20 ms frame, one frame after the squeeze) in samples; the same for s = 1 and CIF."""
    s = MODELS[name][1] or 1
    one = min_samples(name)
    return one, one + 320 * (s - 1) * MODELS[name][2]


@pytest.mark.parametrize("which", ["one_frame", "one_squeezed_frame"])
@pytest.mark.parametrize("name", NAMES)
def test_shortest_input_alone_equals_it_in_a_padded_batch(name, which):
    m = model(name)
    n = shortest(name)[which == "one_squeezed_frame"]
    frames = 1 if which == "one_frame" else (MODELS[name][1] or 1)
    source, padding = waveform_batch([n, 2 * SR])
    alone, alone_valid, alone_exits = run(m, source[:1, :n])
    together, valid, exits = run(m, source, padding)
    for x in (alone, together, *alone_exits.values(), *exits.values()):
        assert torch.isfinite(x).all()
    assert alone.size(1) == alone_valid[0] == valid[0] == frames
    assert_same(together[0, :frames], alone[0])
    for layer, logits in alone_exits.items():
        assert_same(exits[layer][0, :frames], logits[0])
    if not is_ctc(m):
        squeeze = MODELS[name][1]
        if which == "one_frame" and squeeze and squeeze > 1:
            # one 20 ms frame fills no squeezed frame: the upsampler gives zeros (as for any tail)
            assert (alone == 0).all()
        else:
            assert (alone.abs().amax(-1) > 0).all()


def test_one_frame_alone_used_to_fail_inside_avg_pool():
    """SEW at s = 2 on a single 400-sample waveform: avg_pool1d over one frame ('Output size is too
    small') before the squeeze padded its input up to one window."""
    m = model("sew_s2")
    x, valid, _ = run(m, torch.randn(1, RECEPTIVE_FIELD))
    assert x.shape == (1, 1, TINY_SEW["encoder_embed_dim"]) and valid.tolist() == [1]


# ---- 3. shorter than the receptive field -----------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_input_shorter_than_the_receptive_field_is_a_value_error(name):
    m = model(name)
    for n in (100, min_samples(name) - 1):
        # counted in the samples the caller gave, also when the model downsamples them first
        with pytest.raises(ValueError, match=rf"shorter than the feature extractor's receptive field.*: at least {min_samples(name)} samples"):
            run(m, torch.randn(1, n))
    run(m, torch.randn(1, min_samples(name)))  # the boundary itself runs


# ---- 4. bf16 autocast ------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_finite_and_close_to_fp32(name):
    m = model(name)
    lengths = [2 * SR, SR + 4321]
    source, padding = waveform_batch(lengths)
    ref, ref_valid, ref_exits = run(m, source, padding)
    cif = MODELS[name][1] is None
    ref_alpha = last_compression().alpha if cif else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, valid, exits = run(m, source, padding)
    assert half.dtype == torch.bfloat16  # autocast did reach the matmuls
    for x in (half, *exits.values()):
        assert torch.isfinite(x).all()
    if cif:
        # bf16 moves the weights alpha a little, and where their running sum passes an integer
        # nearby a frame is integrated into a different compressed frame: compare alpha and lengths
        alpha = last_compression().alpha
        assert torch.isfinite(alpha).all() and (alpha.float() - ref_alpha).abs().max() <= 0.02
        assert (valid - ref_valid).abs().max() <= 2
        return
    assert torch.equal(valid, ref_valid)
    rows = torch.arange(ref.size(1))[None, :] < ref_valid[:, None]
    # bf16 keeps 8 bits of mantissa: ~0.4% per rounding, through a few layers of a tiny model
    scale = ref[rows].abs().max()
    assert (half.float() - ref)[rows].abs().max() <= 0.1 * scale
    for layer, logits in ref_exits.items():
        assert (exits[layer].float() - logits)[rows].abs().max() <= 0.1 * logits[rows].abs().max()


# ---- 5. all-padding rows ---------------------------------------------------------------------

@pytest.mark.parametrize("empty", [0, 100], ids=["0samples", "100samples"])
@pytest.mark.parametrize("name", NAMES)
def test_a_row_without_frames_is_padding_not_nan(name, empty):
    """A row of 0 samples (all padding) or of fewer samples than the receptive field has no frame."""
    m = model(name)
    lengths = [SR + 777, empty, 9000]
    source, padding = waveform_batch(lengths)
    x, valid, exits = run(m, source, padding)
    for out in (x, *exits.values()):
        assert torch.isfinite(out).all()
    assert valid[1] == 0
    squeeze = MODELS[name][1]
    if not is_ctc(m) and squeeze and squeeze > 1:
        assert (x[1] == 0).all()  # the upsampler zeroes frames that stem from padding
    for i in (0, 2):
        alone, alone_valid, alone_exits = run(m, source[i : i + 1, : lengths[i]])
        assert valid[i] == alone_valid[0]
        assert_same(x[i, : alone.size(1)], alone[0])
        for layer, logits in alone_exits.items():
            assert_same(exits[layer][i, : alone.size(1)], logits[0])


def test_receptive_field_and_frame_counts_match_the_extractor():
    from sew_plugin.modules.feature_extractor import parse_conv_layers, receptive_field, wfe_c, wfe_o

    assert receptive_field(parse_conv_layers(wfe_o())) == receptive_field(parse_conv_layers(wfe_c(8))) == 400
    extractor = pretraining_model(model("sew_s1")).feature_extractor
    assert extractor.min_samples == 400
    lengths = torch.tensor([0, 1, 399, 400, 719, 720, 1039, 1040, 16000])
    frames = output_frames(lengths, extractor.layers)
    assert frames.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 49]
    with torch.no_grad():
        for n, t in zip(lengths.tolist(), frames.tolist()):
            if n >= 400:
                assert extractor(torch.randn(1, n)).size(-1) == t


@pytest.mark.parametrize("build", [tiny_sew, tiny_sew_d], ids=["sew", "sew_d"])
@pytest.mark.parametrize("factor, frames", [(2, 1), (3, 1), (3, 2)])
def test_fewer_frames_than_the_squeeze_factor_alone_equal_them_in_a_batch(build, factor, frames):
    """At the encoder: T < s frames squeeze to no valid frame; alone they give what a batch gives."""
    m = build(squeeze_factor=factor)
    dim = TINY_SEW["encoder_embed_dim"]
    feats = torch.randn(2, 7, dim)
    padding = torch.arange(7)[None, :] >= torch.tensor([frames, 7])[:, None]
    with torch.no_grad():
        together, _ = m.encoder(feats, padding_mask=padding)
        alone, layer_results = m.encoder(feats[:1, :frames])
    assert alone.shape == (1, frames, dim) and (alone == 0).all()
    assert_same(together[0, :frames], alone[0])
    assert all(torch.isfinite(r[0]).all() for r in layer_results)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_runs_whole_in_the_models_dtype(name):
    """The CPU stand-in for training on a GPU (CI has none): moved to float64 with ``.to()``, a masked
    training forward and its backward stay in float64. A weight or buffer left outside the module tree,
    or a tensor made on the side in float32, fails here where it meets the others in a matmul or conv, as
    it would on a GPU."""
    torch.manual_seed(0)
    m = MODELS[name][0]().train().to(torch.float64)
    source, padding = waveform_batch([16000, 12000])
    source = source.to(torch.float64)
    if is_ctc(m):
        out = m(source=source, padding_mask=padding)["encoder_out"]
    else:
        out = m.get_logits(m(source, padding_mask=padding, mask=True))
    out.sum().backward()
    assert out.dtype == torch.float64
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads)
