"""SEW: Squeezed and Efficient Wav2vec (Wu et al., ICASSP 2022), as a fairseq model.

SEW is wav2vec 2.0 with three changes, each in its own module:

- a compact wave feature extractor, WFE-C (``sew_plugin.feature_extractor``), selected through
  ``wfe_c_channels`` / ``wfe_c_extra_layers`` or written directly as ``conv_feature_layers``;
- a squeezed context network (``sew_plugin.modules.squeezed_encoder``) whose transformer runs
  ``squeeze_factor`` times slower than the 20 ms features;
- MLP predictor heads with BatchNorm (``sew_plugin.modules.predictor_head``) for pre-training.

Everything else (quantizer, masking, negatives, contrastive logits, the ``wav2vec`` criterion) is
fairseq's wav2vec 2.0, inherited unchanged.
"""

from dataclasses import dataclass, field

from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import DictConfig, open_dict

from ..feature_extractor import GroupedConvFeatureExtractor, parse_conv_layers, wfe_c
from ..modules.predictor_head import MLPPredictorHead
from ..modules.squeezed_encoder import SqueezedTransformerEncoder
from .registry import register_models


@dataclass
class SEWConfig(Wav2Vec2Config):
    squeeze_factor: int = field(
        default=2,
        metadata={"help": "frame-rate reduction s of the context network (1 = wav2vec 2.0)"},
    )
    wfe_c_channels: int = field(
        default=0,
        metadata={
            "help": "if > 0, build conv_feature_layers as the compact extractor WFE-C with this "
            "channel base c (conv_feature_layers must then be left at its default)"
        },
    )
    wfe_c_extra_layers: int = field(
        default=1, metadata={"help": "WFE-C: pointwise layers l after each strided conv"}
    )
    use_mlp: bool = field(
        default=False,
        metadata={"help": "MLP predictor heads with BatchNorm instead of linear final_proj/project_q"},
    )
    mlp_hidden_size: int = field(default=4096, metadata={"help": "hidden width of the MLP heads"})


def resolve_config(cfg: SEWConfig) -> SEWConfig:
    """Validate SEW's fields and expand WFE-C into ``conv_feature_layers`` (in place).

    fairseq saves the config it was given, so a checkpoint keeps ``wfe_c_channels`` and the
    default ``conv_feature_layers``; the model's own ``cfg`` (and anything that converts it for
    other implementations) holds the expanded layer list.
    """
    if cfg.squeeze_factor < 1:
        raise ValueError(f"model.squeeze_factor must be an integer >= 1, got {cfg.squeeze_factor}")
    if cfg.wfe_c_channels < 0:
        raise ValueError(f"model.wfe_c_channels must be >= 0, got {cfg.wfe_c_channels}")
    if cfg.wfe_c_channels > 0:
        derived = wfe_c(cfg.wfe_c_channels, cfg.wfe_c_extra_layers)
        default = Wav2Vec2Config.conv_feature_layers
        if cfg.conv_feature_layers not in (default, derived):
            raise ValueError(
                "model.conv_feature_layers and model.wfe_c_channels both describe the feature "
                f"extractor; set only one (got {cfg.conv_feature_layers!r} and WFE-C "
                f"c={cfg.wfe_c_channels}, l={cfg.wfe_c_extra_layers})"
            )
        if isinstance(cfg, DictConfig):
            with open_dict(cfg):
                cfg.conv_feature_layers = derived
        else:
            cfg.conv_feature_layers = derived
    parse_conv_layers(cfg.conv_feature_layers)
    if cfg.use_mlp and cfg.negatives_from_everywhere:
        raise ValueError(
            "model.use_mlp with model.negatives_from_everywhere would put unmasked frames into the "
            "BatchNorm statistics of project_q; the MLP heads are defined on masked frames only"
        )
    return cfg


class SEWModel(Wav2Vec2Model):
    """wav2vec 2.0 with WFE-C, a squeezed context network and optional MLP predictor heads.

    ``forward`` is fairseq's ``Wav2Vec2Model.forward``: (B, S) waveform and (B, S) padding mask in,
    (B, T, D) context vectors at 20 ms out (``features_only``), or contrastive logits for the
    ``wav2vec`` criterion.
    """

    def __init__(self, cfg: SEWConfig):
        super().__init__(resolve_config(cfg))
        self.feature_extractor = GroupedConvFeatureExtractor.from_config(cfg)
        self.encoder = SqueezedTransformerEncoder(cfg, cfg.squeeze_factor)
        if cfg.use_mlp:
            final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
            target_dim = self.project_q.in_features
            self.project_q = MLPPredictorHead(target_dim, final_dim, cfg.mlp_hidden_size)
            self.final_proj = MLPPredictorHead(cfg.encoder_embed_dim, final_dim, cfg.mlp_hidden_size)


register_models(SEWModel, SEWConfig, "sew", "squeeze_wav2vec2")
