"""The SEW model: sizes, squeeze arithmetic, padding exactness, wav2vec 2.0 equivalence, heads."""

import pytest
import torch
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import OmegaConf

import sew_plugin.models  # noqa: F401
from sew_plugin import presets
from sew_plugin.models.sew import SEWConfig, SEWModel
from sew_plugin.modules.predictor_head import MLPPredictorHead
from sew_plugin.modules.squeeze import Upsample

from conftest import TINY_SEW, waveform_batch as batch
from helpers import OpNames, tiny_sew


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected_millions", [("sew_tiny", 40.7), ("w2v2_base", 94.4)])
def test_full_size_parameter_counts_match_the_paper(name, expected_millions):
    model = presets.build_model(name)
    model.remove_pretraining_modules()
    assert round(n_params(model) / 1e6, 1) == expected_millions


def test_registered_under_the_original_release_name():
    from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY

    assert MODEL_REGISTRY["sew"] is SEWModel
    assert issubclass(MODEL_REGISTRY["squeeze_wav2vec2"], SEWModel)
    assert issubclass(MODEL_DATACLASS_REGISTRY["squeeze_wav2vec2"], SEWConfig)


def encode(model, source, padding):
    with torch.no_grad():
        out = model(source, padding_mask=padding if padding.any() else None, mask=False, features_only=True)
    return out["x"], out["padding_mask"]


@pytest.mark.parametrize("squeeze_factor", [1, 2, 3])
def test_padding_exactness_of_the_whole_model(squeeze_factor):
    """An utterance alone gives the same 20 ms outputs as inside a batch padded by longer ones.

    extractor_mode=layer_norm normalises each frame; with the GroupNorm extractor (mode default)
    the front end normalises over the padded length, as in wav2vec 2.0 (see the next test).
    """
    model = tiny_sew(squeeze_factor=squeeze_factor, extractor_mode="layer_norm")
    lengths = [9000, 6730, 4321, 8999]
    source, padding = batch(lengths)
    x_batch, mask_batch = encode(model, source, padding)
    for i, n in enumerate(lengths):
        x_alone, _ = encode(model, source[i : i + 1, :n], padding[i : i + 1, :n])
        valid = x_alone.size(1)
        assert (~mask_batch[i]).sum() == valid  # padding mask from the conv length formula
        assert torch.allclose(x_batch[i, :valid], x_alone[0], atol=1e-5, rtol=0)
        assert (x_batch[i, valid:] == 0).all() or mask_batch[i, valid:].all()


@pytest.mark.parametrize("squeeze_factor", [1, 2, 3])
def test_padding_exactness_of_the_squeezed_context_network(squeeze_factor):
    model = tiny_sew(squeeze_factor=squeeze_factor)
    lengths = [61, 47, 30, 59]
    feats = torch.randn(len(lengths), max(lengths), TINY_SEW["encoder_embed_dim"])
    padding = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        x_batch, _ = model.encoder(feats, padding_mask=padding)
        for i, n in enumerate(lengths):
            x_alone, _ = model.encoder(feats[i : i + 1, :n])
            assert x_alone.shape == (1, n, TINY_SEW["encoder_embed_dim"])
            assert torch.allclose(x_batch[i, :n], x_alone[0], atol=1e-5, rtol=0)


def test_squeeze_factor_one_is_wav2vec2():
    """s = 1: same parameters, same function as fairseq's own wav2vec 2.0."""
    fields = {k: v for k, v in TINY_SEW.items() if k not in ("wfe_c_channels", "mlp_hidden_size")}
    w2v = Wav2Vec2Model(OmegaConf.structured(Wav2Vec2Config(**fields, quantize_targets=True))).eval()
    sew = tiny_sew(squeeze_factor=1, wfe_c_channels=0, conv_feature_layers=w2v.cfg.conv_feature_layers)
    sew.load_state_dict(w2v.state_dict(), strict=True)
    source, padding = batch([8000, 5000])
    for mask in (padding, torch.zeros_like(padding)):
        assert torch.allclose(encode(sew, source, mask)[0], encode(w2v, source, mask)[0], atol=1e-6)


def test_squeezed_lengths_and_output_shape():
    model = tiny_sew(squeeze_factor=3)
    feats = torch.randn(2, 50, TINY_SEW["encoder_embed_dim"])
    with torch.no_grad():
        x, layer_results = model.encoder(feats)
    assert x.shape == feats.shape
    assert layer_results[0][0].shape[0] == 50 // 3  # transformer ran at the squeezed rate (time first)
    assert (x[:, 48:] == 0).all()  # 50 = 16 * 3 + 2: the two tail frames have no squeezed frame


def test_upsample_zeroes_frames_that_come_from_padding():
    up = Upsample(4, factor=2)
    x = torch.randn(2, 3, 4)
    out = up(x, lengths=torch.tensor([3, 1]), target_len=7)
    assert out.shape == (2, 7, 4)
    assert (out[0, 6:] == 0).all() and (out[1, 2:] == 0).all()
    assert (out[1, :2] != 0).any()


@pytest.mark.parametrize("name", ["sew_tiny", "sew_d_tiny", "st_sew_base"])
def test_a_fresh_upsampler_starts_as_frame_repetition(name):
    # a random projection here kept CTC training on the all-blank plateau (see Upsample.reset_parameters)
    encoder = presets.build_model(name, encoder_layers=1).encoder
    up = encoder.upsamplers["2"] if name == "st_sew_base" else encoder.upsample
    weight, dim = up[0].weight, up[0].in_features
    noise = weight - torch.eye(dim).repeat(2, 1)
    assert noise.abs().max() < 0.15 and 0.015 < noise.std() < 0.025
    assert (up[0].bias == 0).all()


def test_pretraining_forward_and_criterion_inputs():
    model = tiny_sew(use_mlp=True, num_negatives=5).train()
    source, padding = batch([16000, 16000])
    out = model(source, padding_mask=None)
    logits = model.get_logits(out)
    assert logits.shape[1] == 1 + 5  # positive + negatives
    assert len(model.get_extra_losses(out)) == 2  # diversity and feature penalty
    logits.float().logsumexp(-1).mean().backward()
    assert model.final_proj.net[0].weight.grad is not None
    assert model.project_q.net[0].weight.grad is not None


def test_mlp_heads_replace_linear_heads_and_are_removed_for_fine_tuning():
    model = tiny_sew(use_mlp=True)
    names = set(model.state_dict())
    for head in ("final_proj", "project_q"):
        assert {f"{head}.net.0.weight", f"{head}.net.1.weight", f"{head}.net.3.weight", f"{head}.net.3.bias"} <= names
    model.remove_pretraining_modules()
    assert not any(k.startswith(("final_proj", "project_q", "quantizer")) for k in model.state_dict())


def test_mlp_head_batchnorm_statistics_come_from_the_given_frames():
    head = MLPPredictorHead(8, 4, hidden_dim=16).train()
    frames = torch.randn(3, 5, 8)  # (B, masked frames, C): fairseq passes only masked frames
    with torch.no_grad():
        hidden = head.net[0](frames.reshape(1, -1, 8).transpose(1, 2))  # (1, 16, 15 frames)
    head(frames)
    assert torch.allclose(head.net[1].running_mean, 0.1 * hidden.mean(dim=(0, 2)), atol=1e-6)


def test_mlp_head_batchnorm_runs_in_fp32_inside_a_half_precision_model():
    head = MLPPredictorHead(8, 4, hidden_dim=16).train()
    frames = torch.randn(40, 8) * 50
    reference = head(frames)
    half = head.to(torch.bfloat16)
    half.net[1].running_mean.zero_()
    out = half(frames.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), reference, atol=0.1, rtol=0.05)


def test_wfe_c_config_expands_into_conv_feature_layers():
    model = tiny_sew(wfe_c_channels=8, wfe_c_extra_layers=1)
    assert model.cfg.conv_feature_layers.startswith("[(8,10,5)]")
    assert len(model.feature_extractor.conv_layers) == 13


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"squeeze_factor": 0}, "model.squeeze_factor"),
        ({"wfe_c_channels": 0, "conv_feature_layers": "[(32,10,5), (32,3)]"}, "model.conv_feature_layers"),
        ({"wfe_c_channels": 8, "conv_feature_layers": "[(32,10,5)]"}, "model.wfe_c_channels"),
        ({"use_mlp": True, "negatives_from_everywhere": True}, "model.negatives_from_everywhere"),
    ],
)
def test_invalid_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny_sew(**overrides)


def test_grouped_in_place_feature_extractor_equals_fairseqs():
    """The cache-friendly, in-place inference path computes fairseq's extractor."""
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    for mode in ("default", "layer_norm"):
        extractor = tiny_sew(extractor_mode=mode).feature_extractor
        source = torch.randn(3, 4000)
        reference = ConvFeatureExtractionModel.forward(extractor, source).detach()
        one_by_one = torch.cat([ConvFeatureExtractionModel.forward(extractor, s[None]).detach() for s in source])
        with torch.no_grad():
            assert torch.equal(extractor(source), reference)  # in-place GELU: bit-identical
            extractor.GROUP_BYTES = 1  # one utterance per group
            assert torch.equal(extractor(source), one_by_one)
        assert torch.equal(extractor(source).detach(), one_by_one)  # with autograd, grouped
        # a batched convolution and a per-utterance one round differently, within float precision
        assert torch.allclose(one_by_one, reference, atol=1e-5, rtol=1e-5)


def test_half_precision_feature_extractor_runs_channels_last_and_matches_fp32():
    """bf16 on the CPU: every convolution after the first runs on (B, T, C) memory and the first as a
    matrix product (``convolution.convolve``); the features are fairseq's extractor's in fp32,
    within bf16's rounding, for both front ends, grouped by utterance or not."""
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel

    from sew_plugin.inference.precision import set_precision

    layers = "[(32,10,5)] + [(64,3,2)] + [(64,1,1)] + [(64,2,2)]"  # 32+ channels: nothing kept in fp32
    for mode in ("default", "layer_norm"):
        extractor = tiny_sew(extractor_mode=mode, conv_feature_layers=layers, wfe_c_channels=0).feature_extractor
        source = torch.randn(2, 4000)
        with torch.no_grad():
            reference = ConvFeatureExtractionModel.forward(extractor, source)
            set_precision(extractor.eval(), "bf16")
            got = extractor(source.bfloat16())
            extractor.GROUP_BYTES = 1
            one_by_one = extractor(source.bfloat16())
        assert got.dtype == torch.bfloat16 and got.shape == reference.shape
        assert got.transpose(1, 2).is_contiguous()  # (B, C, T) over (B, T, C) memory
        assert torch.equal(got, one_by_one)
        assert (got.float() - reference).abs().max() < 0.02 * reference.abs().max()


def test_layer_results_can_be_dropped_for_inference():
    from sew_plugin.modules import keep_layer_results

    model = tiny_sew()
    source, padding = batch([8000, 5000])
    with torch.no_grad():
        full = model(source, padding_mask=padding, mask=False, features_only=True)
        keep_layer_results(model, False)
        lean = model(source, padding_mask=padding, mask=False, features_only=True)
    assert len(full["layer_results"]) == TINY_SEW["encoder_layers"] and lean["layer_results"] == []
    assert torch.equal(full["x"], lean["x"])


def test_the_saved_config_records_the_wfe_c_layers_the_model_built(tmp_path):
    """fairseq-hydra-train saves the config it handed ``task.build_model``: after the build it names
    the WFE-C layers the weights have, not wav2vec 2.0's default string (a reader without the
    plugin would build the wrong front end), and the plugin still builds the same model from it."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config

    from sew_plugin.modules.feature_extractor import wfe_c

    from conftest import pretraining_corpus
    from helpers import pretraining_task

    task = pretraining_task(pretraining_corpus(tmp_path))
    model_cfg = OmegaConf.structured(SEWConfig(**TINY_SEW, _name="sew"))
    assert model_cfg.conv_feature_layers == Wav2Vec2Config.conv_feature_layers
    model = task.build_model(model_cfg)
    assert model_cfg.conv_feature_layers == wfe_c(TINY_SEW["wfe_c_channels"], 1) == model.cfg.conv_feature_layers
    rebuilt = task.build_model(OmegaConf.create(OmegaConf.to_container(model_cfg)))
    assert set(rebuilt.state_dict()) == set(model.state_dict())


def test_pointwise_convolutions_run_as_batched_products_in_fp32():
    """``convolution.convolve``: a kernel-1 layer is a (C_out, C_in) x (B, C_in, T) product, bias and
    GELU included, with the convolution's result up to fp32 rounding."""
    from sew_plugin.modules.convolution import convolve

    conv = torch.nn.Conv1d(48, 96, 1)
    x = torch.randn(3, 48, 101)
    with torch.no_grad(), OpNames() as ops:
        got, got_gelu = convolve(conv, x), convolve(conv, x, gelu=True)
    with torch.no_grad():
        want = conv(x)
    assert "aten::bmm" in ops.names and not any("convolution" in name for name in ops.names)
    assert got.shape == (3, 96, 101) and torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got_gelu, torch.nn.functional.gelu(want), atol=1e-5, rtol=1e-5)


def test_a_bf16_models_fp32_kept_pointwise_convolutions_run_with_their_casts():
    """The tiny models' pointwise layers are narrow, kept fp32 by ``set_precision`` with hooks that
    cast their input to fp32 and their output back: ``convolve`` runs them as modules, hooks included."""
    from sew_plugin.inference.precision import set_precision
    from sew_plugin.modules.convolution import convolve

    model = set_precision(tiny_sew().eval(), "bf16")
    convs = [block[0] for block in model.feature_extractor.conv_layers]
    pointwise = [conv for conv in convs if conv.kernel_size == (1,) and conv.weight.dtype == torch.float32]
    assert pointwise  # the 16-channel ones (precision.is_narrow)
    x = torch.randn(2, pointwise[0].in_channels, 50).bfloat16()
    with torch.no_grad():
        got = convolve(pointwise[0], x)
        want = pointwise[0](x)  # the module with its hooks
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
