"""SEW-D: sizes, exactness against transformers' SEWDModel, padding, half precision, the caches."""

import pytest
import torch
import transformers  # a test-only dependency, declared in setup.py

import sew_plugin.models  # noqa: F401
from sew_plugin import presets
from sew_plugin.interop.hf import sew_d_hf_config_kwargs, sew_state_dict_to_hf
from sew_plugin.models.sew_d import SEWDModel
from sew_plugin.modules.disentangled_attention import RelativePositions, log_bucket

from conftest import TINY_SEW, max_diff_to_transformers, waveform_batch
from helpers import tiny_sew_d


def features_batch(lengths, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), dim, generator=g)
    padding = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    return feats, padding


@pytest.mark.parametrize(
    "name, expected_millions", [("sew_d_tiny", 24.1), ("sew_d_mid", 78.8), ("sew_d_base_plus", 177.0)]
)
def test_full_size_parameter_counts_match_the_paper(name, expected_millions):
    model = presets.build_model(name)
    model.remove_pretraining_modules()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == expected_millions


def test_registered_under_both_names_with_the_original_parameter_names():
    from fairseq.models import MODEL_REGISTRY

    assert MODEL_REGISTRY["sew_d"] is SEWDModel and issubclass(MODEL_REGISTRY["squeeze_wav2vec2_deberta"], SEWDModel)
    names = set(tiny_sew_d().state_dict())
    for key in (
        "encoder.pos_conv.0.weight_g",
        "encoder.encoder.layer.1.attention.self.query_proj.weight",
        "encoder.encoder.layer.1.attention.output.LayerNorm.bias",
        "encoder.encoder.layer.1.intermediate.dense.weight",
        "encoder.encoder.layer.1.output.dense.weight",
        "encoder.encoder.rel_embeddings.weight",
        "encoder.encoder.LayerNorm.weight",
        "encoder.upsample.0.weight",
    ):
        assert key in names, key


def test_log_buckets_match_the_reference_formula():
    """sew.md section 5, evaluated independently in float64 away from rounding boundaries."""
    import math

    mid, max_pos = 128, 512
    rel = torch.arange(-2000, 2001)
    ours = log_bucket(rel, 256, max_pos)
    for r in [0, 1, -1, 127, -127, 128, -128, 129, 200, -300, 511, 700, -2000]:
        a = mid - 1 if abs(r) < mid else abs(r)
        expected = r if a <= mid else int(math.copysign(math.ceil(math.log(a / mid) / math.log((max_pos - 1) / mid) * (mid - 1)) + mid, r))
        assert ours[r + 2000].item() == expected, r
    assert (ours == -ours.flip(0)).all()  # odd symmetry: p2c and c2p share one index


def test_relative_positions_use_only_reachable_buckets():
    # the window of table rows is a multiple of 32 (RelativePositions.ROW_ALIGNMENT) starting at the first used
    short = RelativePositions(10, 256, 512, torch.device("cpu"))
    assert short.rows == 32 and short.first == 256 - 9 and short.index.max() == 18  # distances -9..9
    assert short.index[0, 0] == 9 and short.index[0, 9] == 0 and short.index[9, 0] == 18
    medium = RelativePositions(300, 256, 512, torch.device("cpu"))  # bucket(299) = 206
    assert medium.rows == 416 and medium.first == 256 - 206 and medium.index.max() == 2 * 206
    end = RelativePositions(499, 256, 512, torch.device("cpu"))  # 507 rows used: the window ends with the table
    assert end.rows == 512 and end.first == 0 and end.index.min() == 3 and end.index.max() == 509
    long = RelativePositions(600, 256, 512, torch.device("cpu"))  # reaches the clamped table ends
    assert long.first == 0 and long.rows == 512


@pytest.mark.parametrize("pos_att_type", ["p2c|c2p", "c2p"])
def test_matches_transformers_sew_d_beyond_512_squeezed_frames(pos_att_type):
    model = tiny_sew_d(pos_att_type=pos_att_type, encoder_layers=2)
    hf = transformers.SEWDModel(transformers.SEWDConfig(**sew_d_hf_config_kwargs(model.cfg))).eval()
    hf.load_state_dict(sew_state_dict_to_hf(model.state_dict()), strict=True)

    # 1100 frames -> 550 squeezed frames (> 512: distances beyond the log buckets' range).
    # Shorter utterances have even frame counts (transformers >= 5 pools masks with ceil, see SEW).
    diff = max_diff_to_transformers(model, hf, [1100, 700, 420])
    assert diff < 1e-4, diff


@pytest.mark.parametrize("squeeze_factor", [1, 2, 3])
def test_padding_exactness(squeeze_factor):
    model = tiny_sew_d(squeeze_factor=squeeze_factor)
    lengths = [61, 47, 30, 59]
    feats, padding = features_batch(lengths, TINY_SEW["encoder_embed_dim"])
    with torch.no_grad():
        x_batch, _ = model.encoder(feats, padding_mask=padding)
        for i, n in enumerate(lengths):
            x_alone, _ = model.encoder(feats[i : i + 1, :n])
            assert torch.allclose(x_batch[i, :n], x_alone[0], atol=1e-5, rtol=0)


def test_padding_exactness_of_the_whole_model():
    model = tiny_sew_d(extractor_mode="layer_norm")
    lengths = [9000, 6730, 4321]
    source, padding = waveform_batch(lengths)
    with torch.no_grad():
        batch = model(source, padding_mask=padding, mask=False, features_only=True)["x"]
        for i, n in enumerate(lengths):
            alone = model(source[i : i + 1, :n], mask=False, features_only=True)["x"][0]
            assert torch.allclose(batch[i, : alone.size(0)], alone, atol=1e-5, rtol=0)


def test_bf16_autocast_is_finite_close_and_zero_on_fully_padded_rows():
    model = tiny_sew_d()
    feats, padding = features_batch([40, 25, 1], TINY_SEW["encoder_embed_dim"])  # 1 frame -> 0 squeezed frames
    with torch.no_grad():
        ref, _ = model.encoder(feats, padding_mask=padding)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = model.encoder(feats, padding_mask=padding)
    assert torch.isfinite(half).all()
    assert (half[2] == 0).all() and (ref[2] == 0).all()
    valid = ~padding
    assert (half.float() - ref).abs()[valid].max() < 0.1  # bf16 has 8 bits of mantissa


def test_position_tables_are_computed_once_in_inference_and_refreshed_after_a_weight_change():
    model = tiny_sew_d()
    attention = model.encoder.encoder.layer[0].attention.self
    calls = []
    hook = attention.key_proj.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    feats, _ = features_batch([40], TINY_SEW["encoder_embed_dim"])
    with torch.no_grad():
        first, _ = model.encoder(feats)
        model.encoder(feats)
        table_calls = [n for n in calls if n == 512]
        assert len(table_calls) == 1  # the (512, D) table went through key_proj once for two forwards
        attention.key_proj.weight.add_(0.5)
        changed, _ = model.encoder(feats)
    assert len([n for n in calls if n == 512]) == 2
    assert not torch.allclose(first, changed)
    hook.remove()


def test_training_mode_recomputes_with_gradients_to_the_position_weights():
    model = tiny_sew_d().train()
    feats, padding = features_batch([40, 30], TINY_SEW["encoder_embed_dim"])
    x, _ = model.encoder(feats, padding_mask=padding)
    x.pow(2).mean().backward()
    assert model.encoder.encoder.rel_embeddings.weight.grad.abs().sum() > 0
    assert model.encoder.encoder.LayerNorm.weight.grad is not None


@pytest.mark.parametrize(
    "overrides, key",
    [({"pos_att_type": "c2p|p2p"}, "model.pos_att_type"), ({"share_att_key": False}, "model.share_att_key"),
     ({"position_buckets": 600}, "model.position_buckets")],
)
def test_unsupported_settings_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny_sew_d(**overrides)


def test_attention_in_cache_sized_groups_equals_the_whole_batch():
    model = tiny_sew_d()
    feats, padding = features_batch([61, 47, 30, 59, 12], TINY_SEW["encoder_embed_dim"])
    with torch.no_grad():
        whole, _ = model.encoder(feats, padding_mask=padding)
        for layer in model.encoder.encoder.layer:
            layer.attention.self.CACHE_BYTES = 1  # one utterance per group
        grouped, _ = model.encoder(feats, padding_mask=padding)
    assert torch.allclose(whole, grouped, atol=1e-6, rtol=0)
