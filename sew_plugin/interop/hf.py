"""Key and config maps from this plugin's SEW / SEW-D models to HuggingFace ``transformers``
(``SEWModel``, ``SEWDModel``).

The maps follow the names of the original SEW release. They are explicit
tables: a key that no rule covers raises instead of being dropped, so a converted model can never
be silently half random.
"""

import re
from typing import Dict, Mapping

import torch

from ..modules.disentangled_attention import position_terms
from ..modules.feature_extractor import parse_conv_layers

# Keys that exist only for pre-training; HF's base model has no counterpart.
PRETRAINING_ONLY = re.compile(r"^(quantizer\.|project_q\.|final_proj\.|target_glu\.)")

# (pattern, replacement) applied to fairseq SEW keys, first match wins.
_SEW_RULES = [
    # the front end: feature extractor (GroupNorm of layer 0 with extractor_mode=default, LayerNorm of
    # every layer with layer_norm), its layer norm and the projection into the transformer's width
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2(\.1)?\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\3"),
    (r"^layer_norm\.(weight|bias)$", r"layer_norm.\1"),
    (r"^post_extract_proj\.(weight|bias)$", r"feature_projection.\1"),
    # the squeeze's positional convolution, under transformers' weight-norm parametrization
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    # SEW's transformer layers
    (r"^encoder\.layers\.(\d+)\.self_attn\.(k|v|q|out)_proj\.(weight|bias)$", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", r"encoder.layers.\1.layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
    # after the layers: the final norm and the upsampler
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (r"^encoder\.upsample\.0\.(weight|bias)$", r"encoder.upsample.projection.\1"),
    # SEW-D: the DeBERTa stack already carries HF's names
    (r"^(encoder\.encoder\.(layer\.\d+\.|rel_embeddings\.|LayerNorm\.).+)$", r"\1"),
]


def sew_state_dict_to_hf(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a SEW or SEW-D state dict to ``transformers`` ``SEWModel`` / ``SEWDModel`` keys.

    Pre-training heads are left out; any other key without a rule raises ``KeyError``.
    """
    out = {}
    for key, value in state_dict.items():
        if PRETRAINING_ONLY.match(key):
            continue
        for pattern, replacement in _SEW_RULES:
            new_key, n = re.subn(pattern, replacement, key)
            if n:
                out[new_key] = value
                break
        else:
            raise KeyError(f"no transformers SEWModel name for parameter {key!r}")
    return out


CTC_ENCODER_PREFIX = "w2v_encoder.w2v_model."
CTC_HEAD = re.compile(r"^w2v_encoder\.proj\.(weight|bias)$")


def sew_ctc_state_dict_to_hf(state_dict: Mapping[str, torch.Tensor], base_prefix: str) -> Dict[str, torch.Tensor]:
    """Rename a ``sew_ctc`` state dict (SEW or SEW-D encoder) to ``SEWForCTC`` / ``SEWDForCTC`` keys.

    The encoder's keys (``w2v_encoder.w2v_model.*``) go under ``base_prefix`` (``sew`` or ``sew_d``,
    the base model's attribute), the CTC projection ``w2v_encoder.proj`` becomes ``lm_head``; any other
    key (early-exit heads, an input downsampler) raises ``KeyError``.
    """
    encoder, out = {}, {}
    for key, value in state_dict.items():
        head = CTC_HEAD.match(key)
        if head:
            out[f"lm_head.{head.group(1)}"] = value
        elif key.startswith(CTC_ENCODER_PREFIX):
            encoder[key[len(CTC_ENCODER_PREFIX):]] = value
        else:
            raise KeyError(f"no transformers SEWForCTC name for parameter {key!r}")
    out.update({f"{base_prefix}.{k}": v for k, v in sew_state_dict_to_hf(encoder).items()})
    return out


# fairseq activation names -> transformers ACT2FN names of the same function
_ACTIVATIONS = {
    "gelu": "gelu",  # exact (erf) GELU in both
    "gelu_accurate": "gelu_new",  # tanh approximation in both
    "gelu_fast": "gelu_new",  # fairseq's deprecated alias of gelu_accurate
    "relu": "relu",
    "relu_squared": "relu2",
    "tanh": "tanh",
    "linear": "linear",
}


def hf_activation(name) -> str:
    """transformers' name of fairseq's activation ``name``; ``ValueError`` when it has none."""
    try:
        return _ACTIVATIONS[str(name)]
    except KeyError:
        raise ValueError(f"model.activation_fn={name!r} has no transformers equivalent") from None


# transformers.SEWConfig key -> the fairseq config key it takes its value from
SEW_CONFIG_KEYS = {
    "conv_bias": "conv_bias", "hidden_size": "encoder_embed_dim", "intermediate_size": "encoder_ffn_embed_dim",
    "num_attention_heads": "encoder_attention_heads", "num_hidden_layers": "encoder_layers",
    "num_conv_pos_embeddings": "conv_pos", "num_conv_pos_embedding_groups": "conv_pos_groups",
    "squeeze_factor": "squeeze_factor", "layerdrop": "encoder_layerdrop", "hidden_dropout": "dropout",
    "attention_dropout": "attention_dropout", "activation_dropout": "activation_dropout",
    "feat_proj_dropout": "dropout_input",
}


def sew_hf_config_kwargs(cfg) -> dict:
    """``transformers.SEWConfig`` keyword arguments equivalent to a SEW model config (eval mode)."""
    if cfg.layer_norm_first:
        raise ValueError("transformers' SEWModel is post-LN only; model.layer_norm_first=true cannot be represented")
    if cfg.squeeze_factor == 1:
        raise ValueError(
            "model.squeeze_factor=1 is wav2vec 2.0's context network without an upsampler; "
            "transformers' SEWModel always has one, so it cannot represent this model"
        )
    layers = parse_conv_layers(cfg.conv_feature_layers)
    return dict(
        conv_dim=[c for c, _, _ in layers],
        conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers],
        feat_extract_norm="group" if str(cfg.extractor_mode) == "default" else "layer",
        feat_extract_activation="gelu",
        hidden_act=hf_activation(cfg.activation_fn),
        layer_norm_eps=1e-5,
        **{theirs: getattr(cfg, ours) for theirs, ours in SEW_CONFIG_KEYS.items()},
    )


def sew_d_hf_config_kwargs(cfg) -> dict:
    """``transformers.SEWDConfig`` keyword arguments equivalent to a SEW-D model config (eval mode)."""
    kwargs = sew_hf_config_kwargs(cfg)
    kwargs.update(
        hidden_act="gelu_python",  # exact GELU in the DeBERTa layers
        layer_norm_eps=1e-7,
        feature_layer_norm_eps=1e-5,
        max_position_embeddings=cfg.max_position_embeddings,
        position_buckets=cfg.position_buckets,
        share_att_key=cfg.share_att_key,
        relative_attention=cfg.relative_attention,
        position_biased_input=cfg.position_biased_input,
        pos_att_type=position_terms(cfg.pos_att_type),
        norm_rel_ebd=cfg.norm_rel_ebd,
    )
    return kwargs
