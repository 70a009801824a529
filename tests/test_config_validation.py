"""Absurd model config values are refused when the model is built, with an error naming the key
(issue 10): ``model.<key> must be <requirement>, got <value>``; the papers' own configs pass."""

import re
from argparse import Namespace

import numpy as np
import pytest
from fairseq.data import Dictionary
from fairseq.data.data_utils import compute_mask_indices
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import OmegaConf, open_dict

import sew_plugin.models  # noqa: F401
from fairseq.models import MODEL_REGISTRY
from sew_plugin import presets
from sew_plugin.config_rules import check_rules
from sew_plugin.models.sew import SEWConfig, SEWModel, resolve_config
from sew_plugin.models.sew_ctc import CTC_RULES, SEWCtc, SEWCtcConfig
from sew_plugin.models.sew_d import SEWDConfig, SEWDModel
from sew_plugin.models.st_sew import StSEWConfig, StSEWModel

from conftest import TINY_SEW, TINY_W2V2_FRONT_END
from helpers import tiny_ctc, write_release_checkpoint

FAMILIES = {"sew": (SEWModel, SEWConfig), "sew_d": (SEWDModel, SEWDConfig), "st_sew": (StSEWModel, StSEWConfig)}


def tiny_config(family: str, **overrides):
    config = FAMILIES[family][1]
    return OmegaConf.structured(config(**{**TINY_SEW, "quantize_targets": True, **overrides}))


def build(family: str, **overrides):
    return FAMILIES[family][0].build_model(tiny_config(family, **overrides))


# (key, bad value, other overrides, fragment of the message); TINY_SEW: embed 32, final_dim 16, 2 layers
COMMON = [
    ("mask_prob", 1.5, {}, "in [0, 1], got 1.5"),
    ("mask_prob", -0.1, {}, "in [0, 1]"),
    ("mask_length", 0, {}, ">= 1 when model.mask_prob > 0, got 0"),
    ("mask_channel_prob", 2.0, {}, "in [0, 1]"),
    ("mask_channel_length", 0, {"mask_channel_prob": 0.1}, ">= 1 when model.mask_channel_prob > 0"),
    # fairseq masks channels of the 32-wide encoder input; 0.25 x 32 / 9 < 1 span: some utterance gets none
    ("mask_channel_length", 9, {"mask_channel_prob": 0.25}, "below the 32 channels it masks (model.encoder_embed_dim)"),
    ("mask_channel_length", 9, {"mask_channel_prob": 0.25}, "at most model.mask_channel_prob x 32 = 8"),
    ("mask_channel_length", 32, {"mask_channel_prob": 1.0}, "got 32"),
    ("mask_channel_length", 32, {"mask_channel_prob": 0.5, "mask_channel_selection": "normal"}, "got 32"),
    ("encoder_layers", 0, {}, ">= 1, got 0"),
    ("encoder_embed_dim", 0, {}, ">= 1"),
    ("encoder_ffn_embed_dim", -4, {}, ">= 1"),
    ("encoder_attention_heads", 0, {}, ">= 1"),
    ("encoder_attention_heads", 3, {}, "a divisor of model.encoder_embed_dim=32, got 3"),
    *[(key, 1.0, {}, "in [0, 1), got 1.0") for key in ("dropout", "attention_dropout", "activation_dropout",
                                                      "dropout_input", "dropout_features", "encoder_layerdrop")],
    ("dropout", -0.1, {}, "in [0, 1)"),
    ("dropout", float("nan"), {}, "in [0, 1)"),
    ("mask_selection", "uniform", {}, "static, normal or poisson (fairseq 0.12.3's compute_mask_indices crashes"),
    ("mask_channel_selection", "uniform", {}, "static, normal or poisson"),
    ("no_mask_overlap", True, {}, "false (fairseq 0.12.3's compute_mask_indices crashes"),
    ("no_mask_channel_overlap", True, {}, "false"),
    ("conv_pos", 0, {}, ">= 1"),
    ("conv_pos_groups", 0, {}, ">= 1"),
    ("conv_pos_groups", 3, {}, "a divisor of model.encoder_embed_dim=32"),
    ("num_negatives", -1, {}, ">= 0"),
    ("cross_sample_negatives", -1, {}, ">= 0"),
    ("codebook_negatives", -1, {}, ">= 0"),
    ("num_negatives", 0, {}, ">= 1 when model.cross_sample_negatives and model.codebook_negatives are 0"),
    ("final_dim", -1, {}, ">= 0"),
    ("latent_dim", -1, {}, ">= 0"),
    ("latent_vars", 0, {}, ">= 1 with model.quantize_targets"),
    ("latent_groups", 0, {}, ">= 1 with model.quantize_targets"),
    ("latent_groups", 3, {}, "a divisor of the quantizer dim [16]"),  # final_dim 16
    ("latent_groups", 2, {"latent_dim": 9}, "a divisor of the quantizer dim [9]"),
    ("latent_groups", 3, {"quantize_targets": False, "quantize_input": True, "final_dim": 0}, "quantizer dim [32]"),
    ("latent_temp", (2.0, 0.5, 1.5), {}, "start >= end > 0 and 0 < decay <= 1"),
    ("latent_temp", (0.5, 2.0, 0.999), {}, "start >= end > 0"),
    ("latent_temp", (2.0, 0.0, 0.999), {}, "start >= end > 0"),
    ("latent_temp", (2.0, 0.5), {}, "(start, end, decay)"),
    ("mlp_hidden_size", 0, {"use_mlp": True}, ">= 1 with model.use_mlp, got 0"),
    ("logit_temp", 0.0, {}, "> 0"),
    ("feature_grad_mult", -1.0, {}, ">= 0"),
    ("wfe_c_extra_layers", -1, {}, ">= 0"),
]
SPECIFIC = [
    ("sew", "squeeze_factor", 0, {}, "an integer >= 1"),
    ("sew_d", "squeeze_factor", -1, {}, "an integer >= 1"),
    ("sew_d", "position_buckets", 1, {}, "in [2, model.max_position_embeddings=512), got 1"),
    ("sew_d", "position_buckets", 512, {}, "in [2, model.max_position_embeddings=512)"),
    ("sew_d", "pos_att_type", "c2p|p2p", {}, "'c2p', 'p2c' or 'p2c|c2p'"),
    ("st_sew", "squeeze_factor", 2, {}, "is SEW's fixed factor"),
    ("st_sew", "squeeze_factors", "0,2", {}, "integers >= 1"),
    ("st_sew", "kv_pool_factors", "a", {}, "comma list of integers"),
    ("st_sew", "query_pool_factors", "-1", {}, "integers >= 1"),
    ("st_sew", "pool_layers", "2", {}, "indices must be in [0, 2)"),
    ("st_sew", "operating_point", "3,1,1", {}, "S_f=3 is not one of model.squeeze_factors"),
    ("st_sew", "operating_point", "2,[1,2,2],1", {}, "S_k must be"),
]
CASES = [(family, *case) for family in FAMILIES for case in COMMON] + SPECIFIC


@pytest.mark.parametrize("family, key, value, overrides, fragment", CASES,
                         ids=[f"{c[0]}-{c[1]}={c[2]}" for c in CASES])
def test_absurd_value_is_refused_by_key(family, key, value, overrides, fragment):
    with pytest.raises(ValueError, match=rf"^model\.{key}\b") as refused:
        build(family, **{**overrides, key: value})
    assert fragment in str(refused.value)


@pytest.mark.parametrize("overrides", [
    {"mask_prob": 0.0, "mask_length": 0},  # no time masks: their length is unused
    {"mask_channel_prob": 0.0, "mask_channel_length": 0},
    {"mask_channel_prob": 0.0, "mask_channel_length": 64},  # no channel masks: wider than the encoder is unused
    {"mask_channel_prob": 0.25, "mask_channel_length": 8},  # always one span of 8 of the 32 channels
    {"mask_channel_prob": 0.1, "mask_channel_length": 16, "mask_channel_selection": "normal"},
    {"num_negatives": 0, "cross_sample_negatives": 5},
    {"num_negatives": 0, "codebook_negatives": 5},
    {"num_negatives": 0, "quantize_targets": False},  # not a quantized pre-training model
    {"quantize_targets": False, "latent_vars": 0, "latent_groups": 0, "latent_temp": (0.0, 0.0, 0.0)},
    {"mlp_hidden_size": 0},  # no MLP heads
    {"final_dim": 0, "latent_groups": 4},  # quantizer dim = encoder_embed_dim 32
    {"mask_prob": 1.0, "dropout": 0.0, "feature_grad_mult": 0.0},  # the closed ends
])
@pytest.mark.parametrize("family", FAMILIES)
def test_edge_values_that_work_pass(family, overrides):
    cfg = tiny_config(family, **overrides)
    FAMILIES[family][0].check_config(cfg)


def test_a_model_still_builds_with_edge_values():
    model = build("sew", mask_prob=0.0, mask_length=0, num_negatives=0, cross_sample_negatives=3)
    assert model.mask_prob == 0.0 and model.cross_sample_negatives == 3


CTC_CASES = [
    *[(key, 1.0, {}, "in [0, 1), got 1.0") for key in (
        "final_dropout", "dropout", "attention_dropout", "activation_dropout", "dropout_input", "layerdrop")],
    ("final_dropout", -0.5, {}, "in [0, 1)"),
    ("mask_prob", 1.5, {}, "in [0, 1]"),
    ("mask_length", 0, {"mask_prob": 0.5}, ">= 1 when model.mask_prob > 0"),
    ("mask_channel_prob", -0.1, {}, "in [0, 1]"),
    ("mask_channel_length", 0, {"mask_channel_prob": 0.25}, ">= 1 when model.mask_channel_prob > 0"),
    ("mask_channel_selection", "uniform", {}, "static, normal or poisson"),
    ("no_mask_overlap", True, {}, "false"),
    ("feature_grad_mult", -1.0, {}, ">= 0"),
    ("freeze_finetune_updates", -1, {}, ">= 0"),
    ("encoder_lr_scale", 0.0, {}, "in (0, 1]"),
    ("encoder_lr_scale", 1.5, {}, "in (0, 1]"),
    ("reinit_layers", -2, {}, "-1 (every layer) or >= 0"),
]


@pytest.mark.parametrize("options", [dict(mask_type="uniform"), dict(no_overlap=True)])
def test_refused_mask_options_are_the_ones_fairseq_crashes_on(options):
    from fairseq.data.data_utils import compute_mask_indices

    with pytest.raises(AttributeError):  # Generator.randint / np.int: the first step would fail so
        compute_mask_indices((2, 100), None, 0.5, 5, **options)


@pytest.mark.parametrize("key, value, overrides, fragment", CTC_CASES, ids=[f"{c[0]}={c[1]}" for c in CTC_CASES])
def test_absurd_fine_tuning_value_is_refused_before_the_checkpoint_is_read(key, value, overrides, fragment):
    cfg = OmegaConf.structured(SEWCtcConfig(w2v_path="/nonexistent/checkpoint.pt", **{**overrides, key: value}))
    with pytest.raises(ValueError, match=rf"^model\.{key}\b") as refused:
        SEWCtc.build_model(cfg, task=None)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("prob", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_channel_mask_lengths_accepted_are_those_fairseq_draws(prob):
    """Every ``mask_channel_length`` accepted for the 32 channels draws masks in fairseq's own
    ``compute_mask_indices``; every other fails there (at fine-tuning's first step)."""
    for length in range(1, 40):
        try:
            SEWModel.check_config(tiny_config("sew", mask_channel_prob=prob, mask_channel_length=length))
            accepted = True
        except ValueError as refused:
            assert str(refused).startswith("model.mask_channel_length must be below the 32 channels")
            accepted = False
        failures = 0
        for seed in range(100):
            try:
                compute_mask_indices((8, 32), None, prob, length, "static", 0.0, seed=seed, epoch=1, indices=np.arange(8))
            except ValueError:
                failures += 1
        assert (failures == 0) == accepted, (length, failures)


def test_fine_tuning_channel_masks_are_checked_against_the_encoder_width():
    """fairseq writes the fine-tuning masks over the pre-trained encoder's (32 channels here)."""
    with pytest.raises(ValueError, match=r"^model\.mask_channel_length must be below the 32 channels"):
        tiny_ctc(SEWConfig(**TINY_SEW), "sew", mask_channel_prob=0.25, mask_channel_length=64)
    assert tiny_ctc(SEWConfig(**TINY_SEW), "sew", mask_channel_prob=0.25, mask_channel_length=8) is not None


def test_fine_tuning_channel_masks_of_a_wav2vec2_checkpoint_are_checked_once_it_is_read(tmp_path):
    """fairseq's own wav2vec 2.0 encoder has no rules of its own: sew_ctc checks again with its width."""
    encoder = Wav2Vec2Config(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                             conv_feature_layers=TINY_W2V2_FRONT_END, conv_pos=16, final_dim=16, latent_vars=16)
    model_cfg = {**OmegaConf.to_container(OmegaConf.structured(encoder), enum_to_str=True), "_name": "wav2vec2"}
    path = write_release_checkpoint(tmp_path / "w2v2.pt", model_cfg, {"_name": "audio_pretraining", "data": str(tmp_path)},
                                    Wav2Vec2Model(encoder).state_dict(), "wav2vec")
    cfg = OmegaConf.structured(SEWCtcConfig(w2v_path=str(path), data=str(tmp_path), normalize=False, ddp_backend="legacy_ddp",
                                            mask_channel_prob=0.25, mask_channel_length=64))
    with pytest.raises(ValueError, match=r"^model\.mask_channel_length must be below the 32 channels.*got 64$"):
        SEWCtc.build_model(cfg, Namespace(target_dictionary=Dictionary()))


def test_sane_fine_tuning_config_gets_past_the_checks():
    cfg = OmegaConf.structured(SEWCtcConfig(w2v_path="/nonexistent/checkpoint.pt", mask_prob=0.0, mask_length=0))
    with pytest.raises(FileNotFoundError, match=re.escape("model.w2v_path")):
        SEWCtc.build_model(cfg, task=None)


@pytest.mark.parametrize("name", presets.available("pretraining"))
def test_pretraining_configs_pass_the_checks(name):
    """The papers' sizes and recipes are not refused (fairseq's own wav2vec2 configs are checked
    through SEW's rules at squeeze factor 1, the model SEW reduces to)."""
    cfg = presets.model_config(name)
    model = MODEL_REGISTRY[cfg._name]
    if hasattr(model, "check_config"):
        model.check_config(cfg)
    else:
        as_sew = OmegaConf.merge(OmegaConf.structured(SEWConfig), OmegaConf.to_container(cfg), {"squeeze_factor": 1})
        resolve_config(as_sew)


@pytest.mark.parametrize("name", presets.available("finetuning"))
def test_finetuning_configs_pass_the_checks(name):
    cfg = presets.model_config(name, "finetuning")
    check_rules(cfg, CTC_RULES)
    for encoder in presets.available("pretraining"):  # the channel masks fit every pre-trained encoder's width
        with open_dict(cfg):
            cfg.w2v_args = {"model": presets.model_config(encoder)}
        check_rules(cfg, CTC_RULES)
