"""Absurd model config values are refused when the model is built, with an error naming the key
(issue 10): ``model.<key> must be <requirement>, got <value>``; the papers' own configs pass."""

import re

import pytest
from omegaconf import OmegaConf

import sew_plugin.models  # noqa: F401
from fairseq.models import MODEL_REGISTRY
from sew_plugin import presets
from sew_plugin.models.config_rules import check_rules
from sew_plugin.models.sew import SEWConfig, SEWModel, resolve_config
from sew_plugin.models.sew_ctc import CTC_RULES, SEWCtc, SEWCtcConfig
from sew_plugin.models.sew_d import SEWDConfig, SEWDModel
from sew_plugin.models.st_sew import StSEWConfig, StSEWModel

from conftest import TINY_SEW

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
    ("encoder_layers", 0, {}, ">= 1, got 0"),
    ("encoder_embed_dim", 0, {}, ">= 1"),
    ("encoder_ffn_embed_dim", -4, {}, ">= 1"),
    ("encoder_attention_heads", 0, {}, ">= 1"),
    ("encoder_attention_heads", 3, {}, "a divisor of model.encoder_embed_dim=32, got 3"),
    *[(key, 1.0, {}, "in [0, 1), got 1.0") for key in ("dropout", "attention_dropout", "activation_dropout",
                                                      "dropout_input", "dropout_features", "encoder_layerdrop")],
    ("dropout", -0.1, {}, "in [0, 1)"),
    ("dropout", float("nan"), {}, "in [0, 1)"),
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
    ("feature_grad_mult", -1.0, {}, ">= 0"),
    ("freeze_finetune_updates", -1, {}, ">= 0"),
]


@pytest.mark.parametrize("key, value, overrides, fragment", CTC_CASES, ids=[f"{c[0]}={c[1]}" for c in CTC_CASES])
def test_absurd_fine_tuning_value_is_refused_before_the_checkpoint_is_read(key, value, overrides, fragment):
    cfg = OmegaConf.structured(SEWCtcConfig(w2v_path="/nonexistent/checkpoint.pt", **{**overrides, key: value}))
    with pytest.raises(ValueError, match=rf"^model\.{key}\b") as refused:
        SEWCtc.build_model(cfg, task=None)
    assert fragment in str(refused.value)


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
    check_rules(presets.model_config(name, "finetuning"), CTC_RULES)
