"""Checkpoints of the original SEW release (the ``sew_asapp`` plugin) load into this plugin's models.

The release registered ``feat_mlp_wav2vec2`` (wav2vec 2.0 with MLP heads), ``squeeze_wav2vec2``
(SEW), ``squeeze_wav2vec2_deberta`` (SEW-D) and ``wav2vec_ctc_v2`` (CTC), with config classes that
also carry options for experiments beyond the papers (spectrogram inputs, other squeeze and MLP
variants, momentum heads, an output upsampler). Each name is registered here with a config class
that accepts those fields, so that fairseq merges a stored config without dropping them unseen.
The settings of the papers' models build this plugin's ``SEWModel`` / ``SEWDModel`` / ``SEWCtc``,
which keep the release's parameter names and compute the same function; any other
setting is refused by key instead of being built into a model that would compute something else.
"""

from dataclasses import dataclass, field

from ..config_rules import check_rules
from .registry import register_models
from .sew import SEWConfig, SEWModel
from .sew_ctc import SEWCtc, SEWCtcConfig
from .sew_d import SEWDConfig, SEWDModel


@dataclass
class ReleaseFields:
    """The release's model fields that this plugin's configs do not have (its defaults)."""

    squeeze_method: str = "default"
    mlp_version: str = "v1"
    mlp_num_layers: int = 2
    mlp_act_type: str = "relu"
    proj_mlp_norm_type: str = "in"
    share_final_proj: bool = False
    final_proj_momentum: float = -1.0
    spec_feature_only: bool = False
    fbank_dim: int = 0
    mfcc_dim: int = 0
    conv_hidden_sizes: str = "[32, 32]"
    conv_kernel_sizes: str = "[3, 3]"
    conv_strides: str = "[2, 2]"
    conv_exp_ratios: str = "[1., 4.]"
    conv_use_pad: bool = False
    encoder_input_embed_dim: int = -1
    conv_flatten_dim: int = -1
    subsample_type: str = "conv2dv4"
    conv_norm_type: str = "none"
    conv_act_type: str = "relu"
    conv_kaiming_init: bool = False
    feature_extractor_type: str = "default"
    chunk_mode: str = "chunk"


def _mlp(requirement):
    """A rule on an MLP-head field that only matters with ``use_mlp``."""
    return lambda value, cfg: not cfg.use_mlp or requirement(value)


# What the papers' models were trained with; the release's other options are refused by key.
RELEASE_RULES = [
    ("squeeze_method", lambda v, c: v == "default", "'default' (the papers' pooling + strided conv squeeze)"),
    ("spec_feature_only", lambda v, c: not v, "false: spectrogram inputs are not supported"),
    ("fbank_dim", lambda v, c: v == 0, "0: filter-bank inputs are not supported"),
    ("mfcc_dim", lambda v, c: v == 0, "0: MFCC inputs are not supported"),
    ("feature_extractor_type", lambda v, c: v == "default", "'default' (the wave feature extractor)"),
    ("encoder_input_embed_dim", lambda v, c: v <= 0 or v == c.encoder_embed_dim,
     "<= 0 or model.encoder_embed_dim (no input projection inside the context network)"),
    ("mlp_version", _mlp(lambda v: v == "v3"), "'v3' with model.use_mlp (SEW's heads: 1x1 convolutions with BatchNorm)"),
    ("mlp_num_layers", _mlp(lambda v: v == 2), "2 with model.use_mlp"),
    ("proj_mlp_norm_type", _mlp(lambda v: v == "bn"), "'bn' with model.use_mlp"),
    ("mlp_act_type", _mlp(lambda v: v == "relu"), "'relu' with model.use_mlp"),
    ("share_final_proj", lambda v, c: not v, "false (shared prediction heads are not supported)"),
    ("final_proj_momentum", lambda v, c: v < 0, "< 0 (momentum heads are not supported)"),
]


@dataclass
class ReleaseSEWConfig(SEWConfig, ReleaseFields):
    pass


@dataclass
class ReleaseFeatMLPConfig(SEWConfig, ReleaseFields):
    squeeze_factor: int = field(default=1, metadata={"help": "feat_mlp_wav2vec2 is wav2vec 2.0: no squeeze"})


@dataclass
class ReleaseSEWDConfig(SEWDConfig, ReleaseFields):
    pass


class ReleaseChecks:
    """Refuses the release's options this plugin does not build, then checks as the model does."""

    @classmethod
    def check_config(cls, cfg):
        check_rules(cfg, RELEASE_RULES)
        return super().check_config(cfg)


class ReleaseSEWModel(ReleaseChecks, SEWModel):
    """``squeeze_wav2vec2`` / ``feat_mlp_wav2vec2`` checkpoints of the original release."""


class ReleaseSEWDModel(ReleaseChecks, SEWDModel):
    """``squeeze_wav2vec2_deberta`` checkpoints of the original release."""


@dataclass
class ReleaseCtcConfig(SEWCtcConfig):
    output_upsample: int = 0
    chunk_mode: str = "flat"
    drop_upsample_layers: int = 0


RELEASE_CTC_RULES = [
    ("output_upsample", lambda v, c: v == 0, "0 (an upsampler after the encoder is not supported)"),
    ("drop_upsample_layers", lambda v, c: v == 0, "0"),
]


class ReleaseCtc(SEWCtc):
    """``wav2vec_ctc_v2`` checkpoints of the original release (its fine-tuning overrides are applied
    to the stored pre-training config, as ``sew_ctc`` does)."""

    @classmethod
    def build_model(cls, cfg, task):
        check_rules(cfg, RELEASE_CTC_RULES)
        if getattr(task, "target_dictionary", None) is None:
            raise ValueError(
                "this wav2vec_ctc_v2 checkpoint names a task without a target dictionary: the release "
                "fine-tuned with the audio_pretraining task of fairseq <= 0.10, which read labels, a job "
                "fairseq 0.12 moved to audio_finetuning; load it with sew_plugin.checkpoint.load_checkpoint "
                "(as sew infer does), which sets it up as the release's audio_pretraining_features")
        return super().build_model(cfg, task)


register_models(ReleaseSEWModel, ReleaseSEWConfig, "squeeze_wav2vec2")
register_models(ReleaseSEWModel, ReleaseFeatMLPConfig, "feat_mlp_wav2vec2")
register_models(ReleaseSEWDModel, ReleaseSEWDConfig, "squeeze_wav2vec2_deberta")
register_models(ReleaseCtc, ReleaseCtcConfig, "wav2vec_ctc_v2")
