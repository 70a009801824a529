"""SEW: Squeezed and Efficient Wav2vec (Wu et al., ICASSP 2022), as a fairseq model.

SEW is wav2vec 2.0 with three changes, each in its own module:

- a compact wave feature extractor, WFE-C (``sew_plugin.modules.feature_extractor``), selected through
  ``wfe_c_channels`` / ``wfe_c_extra_layers`` or written directly as ``conv_feature_layers``;
- a squeezed context network (``sew_plugin.modules.squeezed_encoder``) whose transformer runs
  ``squeeze_factor`` times slower than the 20 ms features;
- MLP predictor heads with BatchNorm (``sew_plugin.modules.predictor_head``) for pre-training.

``compressor: cif`` replaces the fixed squeeze by once-for-all CIF compression (Chen et al., 2023;
``sew_plugin.modules.cif``, ``sew_plugin.models.cif_forward``): the context network runs on
variable-length compressed frames whose rate lambda sets, sampled per batch in pre-training.

Everything else (quantizer, masking, negatives, contrastive logits, the ``wav2vec`` criterion) is
fairseq's wav2vec 2.0, inherited unchanged, except that mask positions follow NumPy's seed
(``sew_plugin.modules.masking``) so that a run can be repeated.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from omegaconf import DictConfig, open_dict

from ..modules.cif import CifCompressor
from ..modules.frame_mask import exact_frame_mask_forward, install_exact_frame_masks
from ..data.audio import SAMPLE_RATE
from ..modules.feature_extractor import GroupedConvFeatureExtractor, output_frames, parse_conv_layers, total_stride, wfe_c
from ..modules.masked_group_norm import mask_feature_norm, valid_samples
from ..modules.masking import SeededMasks
from ..modules.predictor_head import MLPPredictorHead
from ..modules.squeezed_encoder import SqueezedTransformerEncoder
from .cif_forward import compressed_forward
from ..config_rules import Rule, at_least, check_rules, choose, is_rate, masking_rules
from .registry import register_models

# model.compressor: what shortens the 20 ms features before the context network (None: the squeeze,
# inside the encoder), built from the model config, the extractor's output width and frame period
COMPRESSORS = {
    "squeeze": lambda cfg, width, frame_ms: None,
    "cif": lambda cfg, width, frame_ms: CifCompressor(width, cfg.cif_lambda_max, cfg.cif_lambda, cfg.cif_rate_target,
                                                      frame_ms),
}


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
    compressor: str = field(
        default="squeeze",
        metadata={"help": "squeeze: SEW's fixed factor; cif: once-for-all CIF compression (squeeze_factor 1)"},
    )
    cif_lambda_max: float = field(
        default=1.0, metadata={"help": "cif: lambda is sampled per batch from [0, cif_lambda_max), at most 2"}
    )
    cif_lambda: Optional[float] = field(
        default=None, metadata={"help": "cif: fixed lambda in [0, 2) (unset: sample in training and evaluation)"}
    )
    cif_rate_target: float = field(
        default=0.25,
        metadata={"help": "cif: target mean of the unmodified alpha (rate loss; 0.25 = 80 ms at lambda 1)"},
    )
    masked_feature_norm: bool = field(
        default=False,
        metadata={"help": "extractor_mode default: normalise each utterance's first-layer features over its own "
                  "frames in training too (fairseq's statistics over the padded batch otherwise; inference "
                  "always masks them)"},
    )


def has_quantizer(cfg) -> bool:
    return bool(cfg.quantize_targets or cfg.quantize_input)


def quantizer_dims(cfg) -> List[int]:
    """Output dims of the Gumbel quantizers fairseq's ``Wav2Vec2Model`` builds (each must split
    into ``latent_groups`` equal parts): targets use latent_dim, else final_dim, else
    encoder_embed_dim; a separate input quantizer uses latent_dim, else encoder_embed_dim."""
    final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
    dims = []
    if cfg.quantize_targets:
        dims.append(cfg.latent_dim if cfg.latent_dim > 0 else final_dim)
    if cfg.quantize_input and not (cfg.same_quantizer and cfg.quantize_targets):
        dims.append(cfg.latent_dim if cfg.latent_dim > 0 else cfg.encoder_embed_dim)
    return dims


def _latent_temp_ok(value, cfg) -> bool:
    if not has_quantizer(cfg):
        return True
    start, end, decay = (float(v) for v in value)
    return start >= end > 0 and 0 < decay <= 1


DROPOUT_KEYS = ("dropout", "attention_dropout", "activation_dropout", "dropout_input", "dropout_features",
                "encoder_layerdrop")

SEW_RULES: List[Rule] = [
    ("squeeze_factor", at_least(1), "an integer >= 1"),
    ("wfe_c_channels", at_least(0), ">= 0"),
    ("wfe_c_extra_layers", at_least(0), ">= 0"),
    ("encoder_layers", at_least(1), ">= 1"),
    ("encoder_embed_dim", at_least(1), ">= 1"),
    ("encoder_ffn_embed_dim", at_least(1), ">= 1"),
    ("encoder_attention_heads", at_least(1), ">= 1"),
    ("encoder_attention_heads", lambda v, c: c.encoder_embed_dim % v == 0,
     "a divisor of model.encoder_embed_dim={c.encoder_embed_dim}"),
    *[(key, is_rate, "in [0, 1)") for key in DROPOUT_KEYS],
    *masking_rules(lambda c: c.encoder_embed_dim),
    ("conv_pos", at_least(1), ">= 1"),
    ("conv_pos_groups", at_least(1), ">= 1"),
    ("conv_pos_groups", lambda v, c: c.encoder_embed_dim % v == 0,
     "a divisor of model.encoder_embed_dim={c.encoder_embed_dim}"),
    ("num_negatives", at_least(0), ">= 0"),
    ("cross_sample_negatives", at_least(0), ">= 0"),
    ("codebook_negatives", at_least(0), ">= 0"),
    # fairseq's sample_negatives returns nothing when both are 0 and the contrastive logits fail
    ("num_negatives",
     lambda v, c: not c.quantize_targets or v + c.cross_sample_negatives + c.codebook_negatives >= 1,
     ">= 1 when model.cross_sample_negatives and model.codebook_negatives are 0 (pre-training with "
     "model.quantize_targets needs negatives)"),
    ("final_dim", at_least(0), ">= 0 (0: model.encoder_embed_dim)"),
    ("latent_dim", at_least(0), ">= 0 (0: the final dim)"),
    *[(key, lambda v, c: not has_quantizer(c) or v >= 1, ">= 1 with model.quantize_targets or model.quantize_input")
      for key in ("latent_vars", "latent_groups")],
    ("latent_groups", lambda v, c: all(d % v == 0 for d in quantizer_dims(c)),
     lambda c: f"a divisor of the quantizer dim {quantizer_dims(c)} (model.latent_dim if > 0, else "
               "model.final_dim if > 0, else model.encoder_embed_dim)"),
    ("latent_temp", _latent_temp_ok, "(start, end, decay) with start >= end > 0 and 0 < decay <= 1"),
    ("mlp_hidden_size", lambda v, c: not c.use_mlp or v >= 1, ">= 1 with model.use_mlp"),
    ("logit_temp", lambda v, c: v > 0, "> 0"),
    ("feature_grad_mult", at_least(0), ">= 0"),
]


def resolve_config(cfg: SEWConfig) -> SEWConfig:
    """Validate SEW's fields (``SEW_RULES``, then combinations) and expand WFE-C into
    ``conv_feature_layers`` (in place).

    fairseq saves the config it was given, so a checkpoint keeps ``wfe_c_channels`` and the
    default ``conv_feature_layers``; the model's own ``cfg`` (and anything that converts it for
    other implementations) holds the expanded layer list.
    """
    check_rules(cfg, SEW_RULES)
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
    choose(COMPRESSORS, cfg.compressor, "compressor")
    if cfg.compressor == "cif":
        if cfg.squeeze_factor != 1:
            raise ValueError(f"model.compressor=cif replaces the squeeze: set model.squeeze_factor=1 "
                             f"(got {cfg.squeeze_factor})")
        unsupported = dict(negatives_from_everywhere=False, codebook_negatives=0, quantize_input=False,
                           crop_seq_to_multiple=1)
        for key, value in unsupported.items():
            if getattr(cfg, key) != value:
                raise ValueError(f"model.{key}={getattr(cfg, key)!r} is not supported with model.compressor=cif")
    if cfg.use_mlp and cfg.negatives_from_everywhere:
        raise ValueError(
            "model.use_mlp with model.negatives_from_everywhere would put unmasked frames into the "
            "BatchNorm statistics of project_q; the MLP heads are defined on masked frames only"
        )
    return cfg


def _without_extractor_and_encoder(cfg: SEWConfig) -> SEWConfig:
    """``cfg`` for ``Wav2Vec2Model.__init__``, which builds a feature extractor and an encoder of its
    own that ``SEWModel`` replaces: with no encoder layer, a positional convolution of width 1 and
    one pointwise convolution of the extractor's output width (what fairseq sizes the rest of its
    modules by), they cost next to nothing to build and are never used."""
    width = parse_conv_layers(cfg.conv_feature_layers)[-1][0]
    shell = {"encoder_layers": 0, "conv_pos": 1, "conv_feature_layers": f"[({width}, 1, 1)]"}
    if isinstance(cfg, DictConfig):
        shell_cfg = cfg.copy()
        with open_dict(shell_cfg):
            shell_cfg.update(shell)
        return shell_cfg
    return dataclasses.replace(cfg, **shell)


class SEWModel(SeededMasks, Wav2Vec2Model):
    """wav2vec 2.0 with WFE-C, a squeezed context network and optional MLP predictor heads.

    ``forward`` is fairseq's ``Wav2Vec2Model.forward``: (B, S) waveform and (B, S) padding mask in,
    (B, T, D) context vectors at 20 ms out (``features_only``), or contrastive logits for the
    ``wav2vec`` criterion.
    """

    opens_valid_samples = True  # its forward says each row's valid samples (masked GroupNorm front end)

    @classmethod
    def check_config(cls, cfg: SEWConfig) -> SEWConfig:
        """Refuse absurd or unsupported settings by key before anything is built (subclasses add theirs)."""
        return resolve_config(cfg)

    @staticmethod
    def build_encoder(cfg: SEWConfig):
        """The context network (subclasses build theirs)."""
        return SqueezedTransformerEncoder(cfg, cfg.squeeze_factor)

    def __init__(self, cfg: SEWConfig):
        cfg = self.check_config(cfg)
        super().__init__(_without_extractor_and_encoder(cfg))
        self.cfg = cfg
        self.feature_extractor = GroupedConvFeatureExtractor.from_config(cfg)
        self.encoder = self.build_encoder(cfg)
        if cfg.use_mlp:
            final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
            target_dim = self.project_q.in_features
            self.project_q = MLPPredictorHead(target_dim, final_dim, cfg.mlp_hidden_size)
            self.final_proj = MLPPredictorHead(cfg.encoder_embed_dim, final_dim, cfg.mlp_hidden_size)
        self.cif = COMPRESSORS[cfg.compressor](cfg, self.embed, self.feature_period_ms())
        install_exact_frame_masks(self)
        if cfg.masked_feature_norm:
            mask_feature_norm(self)

    def forward(self, source, padding_mask=None, *args, **kwargs):
        """fairseq's wav2vec 2.0 forward (with exact masks for rows without a frame: ``frame_mask``),
        or its CIF-compressed version (``compressed_forward``)."""
        with valid_samples(padding_mask):  # for the masked GroupNorm front end
            if self.cif is None:
                return exact_frame_mask_forward(self, super().forward, source, padding_mask, *args, **kwargs)
            return compressed_forward(self, source, padding_mask, *args, **kwargs)

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        """(B,) waveform samples -> (B,) 20 ms frames of the feature extractor (0 below its receptive field)."""
        return output_frames(samples, self.feature_extractor.layers)

    def feature_period_ms(self) -> float:
        """Audio per frame of the feature extractor (and of the model's output): 20 ms for WFE-O and WFE-C."""
        return 1000 * total_stride(self.feature_extractor.layers) / SAMPLE_RATE

    def context_period_ms(self) -> Optional[float]:
        """Audio per frame the context network runs on: the feature period times the squeeze factor;
        None where it depends on the audio (CIF: ``CifResult.frame_period_ms`` measures it)."""
        return None if self.cif is not None else self.feature_period_ms() * self.encoder.squeeze_factor

    def get_extra_losses(self, net_output):
        """fairseq's (diversity, feature penalty), then CIF's rate or guidance loss: a CIF recipe
        gives ``criterion.loss_weights`` three entries."""
        losses = super().get_extra_losses(net_output)
        if "cif_loss" in net_output:
            losses.append(net_output["cif_loss"])
        return losses


register_models(SEWModel, SEWConfig, "sew")
