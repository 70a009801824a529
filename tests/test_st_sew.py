"""St-SEW: pooling operators, equivalences with wav2vec 2.0 and SEW, padding, sampling, configs."""

import numpy as np
import pytest
import torch
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import OmegaConf

import sew_plugin.models  # noqa: F401
from sew_plugin import presets
from sew_plugin.models.sew import SEWConfig, SEWModel
from sew_plugin.modules.pooled_attention import mean_pool, repeat_upsample
from sew_plugin.modules.side_outputs import collecting

from conftest import TINY_SEW, waveform_batch as batch
from helpers import tiny_st_sew


def test_mean_pool_by_hand_with_a_ragged_tail_and_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 0.0, 0.0]]).unsqueeze(-1)  # (B=2, T=5, C=1)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    pooled, mask = mean_pool(x, 2, padding)
    assert pooled.squeeze(-1).tolist() == [[1.5, 3.5, 5.0], [15.0, 30.0, 0.0]]  # tail windows: valid frames only
    assert mask.tolist() == [[False, False, False], [False, False, True]]
    pooled3, mask3 = mean_pool(x, 3, padding)
    assert pooled3.squeeze(-1).tolist() == [[2.0, 4.5], [20.0, 0.0]]
    assert mask3.tolist() == [[False, False], [False, True]]
    same, same_mask = mean_pool(x, 1, padding)
    assert same is x and same_mask is padding


def test_repeat_upsample_by_hand():
    x = torch.tensor([[[1.0], [2.0], [3.0]]])
    assert repeat_upsample(x, 2, 5).squeeze(-1).tolist() == [[1.0, 1.0, 2.0, 2.0, 3.0]]
    assert repeat_upsample(x, 3, 7).squeeze(-1).tolist() == [[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0]]


def encode(model, source, padding=None):
    with torch.no_grad():
        return model(source, padding_mask=padding, mask=False, features_only=True)["x"]


def configs_used(model) -> list:
    """The (S_f, S_k, S_q) of every forward of ``model`` from now on, read from the layer state its
    encoder begins with (a forward at a fixed point records nothing on the module)."""
    seen, begin = [], model.encoder.begin

    def recording(*args, **kwargs):
        state = begin(*args, **kwargs)
        s_q, s_k = zip(*state.context["pooling"])
        seen.append((state.squeeze_factor, list(s_k), list(s_q)))
        return state

    model.encoder.begin = recording
    return seen


def test_point_111_is_wav2vec2_with_the_same_weights():
    fields = {k: v for k, v in TINY_SEW.items() if k not in ("wfe_c_channels", "mlp_hidden_size")}
    w2v = Wav2Vec2Model(OmegaConf.structured(Wav2Vec2Config(**fields, quantize_targets=True))).eval()
    st = tiny_st_sew(wfe_c_channels=0, conv_feature_layers=w2v.cfg.conv_feature_layers, operating_point="1,1,1")
    missing, unexpected = st.load_state_dict(w2v.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("encoder.upsamplers.") for k in missing)
    source, padding = batch([8000, 5000])
    assert torch.allclose(encode(st, source, padding), encode(w2v, source, padding), atol=1e-6)


def test_point_s11_is_sew_with_the_same_weights():
    sew = SEWModel.build_model(OmegaConf.structured(SEWConfig(**TINY_SEW, quantize_targets=True, squeeze_factor=2))).eval()
    st = tiny_st_sew(operating_point="2,1,1")
    state = {k.replace("encoder.upsample.", "encoder.upsamplers.2."): v for k, v in sew.state_dict().items()}
    st.load_state_dict(state, strict=True)
    source, padding = batch([8000, 5000])
    assert torch.allclose(encode(st, source, padding), encode(sew, source, padding), atol=1e-6)


@pytest.mark.parametrize("point", ["1,1,1", "2,1,1", "2,2,1", "2,2,2", "1,2,2", "2,[1,2],[2,1]"])
def test_padding_exactness_at_every_fixed_point(point):
    model = tiny_st_sew(operating_point=point, extractor_mode="layer_norm")
    source, padding = batch([9000, 6730, 4321, 8999])
    together = encode(model, source, padding)
    for i in range(4):
        n = int((~padding[i]).sum())
        alone = encode(model, source[i : i + 1, :n])[0]
        assert torch.allclose(together[i, : alone.size(0)], alone, atol=1e-5, rtol=0), point


def test_pooling_changes_the_output_and_saves_attention_work():
    model = tiny_st_sew(operating_point="2,1,1")
    used = configs_used(model)
    source, _ = batch([8000])
    reference = encode(model, source)
    model.encoder.set_operating_point("2,2,2")
    assert used[-1][1] == [1, 1]
    pooled = encode(model, source)
    assert used[-1] == (2, [2, 2], [2, 2])
    assert pooled.shape == reference.shape and not torch.allclose(pooled, reference)


def test_sampling_covers_the_sets_and_nothing_else():
    model = tiny_st_sew(squeeze_factors="1,2,3", kv_pool_factors="1,2", query_pool_factors="1,3").train()
    used = configs_used(model)
    source, _ = batch([6000, 6000])
    seen_f, seen_k, seen_q = set(), set(), set()
    np.random.seed(0)
    with torch.no_grad():
        for _ in range(40):
            model(source, mask=False, features_only=True)
            s_f, s_k, s_q = used[-1]
            seen_f.add(s_f), seen_k.update(s_k), seen_q.update(s_q)
    assert (seen_f, seen_k, seen_q) == ({1, 2, 3}, {1, 2}, {1, 3})


def test_fixed_point_never_samples_and_respects_pool_layers():
    model = tiny_st_sew(operating_point="2,2,1").train()
    used = configs_used(model)
    source, _ = batch([6000])
    state = np.random.get_state()[1].copy()
    for i in range(5):
        model(source, mask=False, features_only=True)
        assert len(used) == i + 1 and used[-1] == (2, [2, 2], [1, 1])
    assert (np.random.get_state()[1] == state).all()

    restricted = tiny_st_sew(pool_layers="1").train()
    for _ in range(10):
        out = restricted(source, mask=False, features_only=True)  # the result names the draw, as logged
        with collecting() as reported:
            restricted(source, mask=False, features_only=True)
        _, s_k, s_q = reported["st_sew_config"]
        assert out["squeeze_factor"] in (1.0, 2.0)
        assert s_k[0] == 1 and s_q[0] == 1


def test_stochastic_training_step_reaches_every_upsampler():
    model = tiny_st_sew(use_mlp=True, num_negatives=5).train()
    source, _ = batch([16000, 16000])
    for point in ("1,1,1", "2,2,2"):
        model.encoder.set_operating_point(point)
        out = model(source)
        model.get_logits(out).float().logsumexp(-1).mean().backward()
    assert model.encoder.upsamplers["2"][0].weight.grad is not None


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"squeeze_factors": "0,2"}, "model.squeeze_factors"),
        ({"kv_pool_factors": "a"}, "model.kv_pool_factors"),
        ({"operating_point": "3,1,1"}, "model.operating_point"),
        ({"operating_point": "2,[1,2,2],1"}, "model.operating_point"),
        ({"pool_layers": "5"}, "model.pool_layers"),
        ({"squeeze_factor": 2}, "model.squeeze_factor"),
    ],
)
def test_invalid_settings_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tiny_st_sew(**overrides)


@pytest.mark.parametrize("name, layers, dim", [("st_sew_base", 12, 768), ("st_sew_large", 24, 1024)])
def test_configs_follow_table_1_of_the_paper(name, layers, dim):
    cfg = presets.model_config(name)
    assert (cfg.encoder_layers, cfg.encoder_embed_dim) == (layers, dim)
    assert (cfg.squeeze_factors, cfg.kv_pool_factors, cfg.query_pool_factors) == ("1,2", "1,2", "1,2")
    assert cfg.wfe_c_channels == 64


def test_each_steps_configuration_reaches_the_training_log():
    model = tiny_st_sew(operating_point="2,[1,2],1").train()
    source, _ = batch([16000, 16000])
    out = model(source)
    assert (out["squeeze_factor"], out["kv_pool"], out["query_pool"]) == (2.0, 1.5, 1.0)
