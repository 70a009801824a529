"""SEW-D: SEW with a DeBERTa-v2 disentangled-attention encoder (SEW paper, section 3.5).

The front end, squeeze and upsample are SEW's; the transformer is ``DebertaEncoder``. Unlike SEW
there is no LayerNorm or dropout between the squeeze and the first layer (as in the original).
"""

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from ..modules.deberta_encoder import DebertaEncoder
from ..modules.disentangled_attention import position_terms
from ..modules.layerwise import LayerState
from ..modules.squeezed_encoder import SqueezedEncoder
from .registry import register_models
from ..config_rules import Rule, check_rules
from .sew import SEWConfig, SEWModel


@dataclass
class SEWDConfig(SEWConfig):
    max_position_embeddings: int = field(default=512, metadata={"help": "largest distance the log buckets cover"})
    position_buckets: int = field(default=256, metadata={"help": "relative-position buckets per direction"})
    share_att_key: bool = field(default=True, metadata={"help": "project positions with the content query/key projections"})
    relative_attention: bool = field(default=True, metadata={"help": "use relative-position attention terms"})
    position_biased_input: bool = field(default=False, metadata={"help": "add absolute positions to the input (unsupported)"})
    pos_att_type: str = field(default="p2c|c2p", metadata={"help": "position terms: 'c2p', 'p2c' or 'p2c|c2p'"})
    norm_rel_ebd: str = field(default="layer_norm", metadata={"help": "normalisation of the relative table"})


SEW_D_RULES: List[Rule] = [
    # log buckets: exact within +-buckets/2 (2 at least), log-spaced out to max_position_embeddings
    ("position_buckets", lambda v, c: 2 <= v < c.max_position_embeddings,
     "in [2, model.max_position_embeddings={c.max_position_embeddings})"),
    ("pos_att_type", lambda v, c: position_terms(v) is not None, "'c2p', 'p2c' or 'p2c|c2p'"),
]


def check_sew_d_config(cfg: SEWDConfig) -> None:
    """The original SEW-D settings are the only ones implemented; refuse others by key."""
    expected = dict(share_att_key=True, relative_attention=True, position_biased_input=False, norm_rel_ebd="layer_norm")
    for key, value in expected.items():
        if getattr(cfg, key) != value:
            raise ValueError(f"model.{key}={getattr(cfg, key)!r} is not supported (SEW-D uses {value!r})")
    check_rules(cfg, SEW_D_RULES)


class SqueezedDebertaEncoder(SqueezedEncoder):
    """Squeeze -> DeBERTa stack (``encoder``) -> upsample, with no LayerNorm or dropout between the
    squeeze and the first layer (as in the original).

    Parameter names: ``pos_conv.0.*``, ``encoder.*`` (see ``DebertaEncoder``), ``upsample.0.*``.
    """

    def __init__(self, cfg: SEWDConfig):
        super().__init__()
        self.layerdrop = cfg.encoder_layerdrop
        self.add_squeeze(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, cfg.squeeze_factor)
        self.encoder = DebertaEncoder(
            cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads,
            cfg.attention_dropout, cfg.activation_dropout, cfg.pos_att_type,
            cfg.position_buckets, cfg.max_position_embeddings,
        )
        self.encoder.apply(_init_linear)  # not the upsampler: its start is frame repetition (see Upsample)

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layer)

    def enter(self, x, padding_mask, lengths) -> LayerState:
        """Batch first, with the position tables every layer reads."""
        context = {"layer_args": self.encoder.layer_context(x.size(1), x.device)}
        return LayerState(x, padding_mask, lengths, 0, lengths, time_first=False, context=context)

    def run_layer(self, i: int, state: LayerState):
        state.x = self.encoder.layer[i](state.x, state.padding_mask, *state.context["layer_args"])
        return None, None

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x  # every DeBERTa layer ends in its own layer norm


def _init_linear(module: nn.Module) -> None:
    """BERT initialisation (normal, std 0.02) of linear and embedding weights, as in DeBERTa."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class SEWDModel(SEWModel):
    """SEW with disentangled attention; everything but the encoder is ``SEWModel``'s."""

    @classmethod
    def check_config(cls, cfg: SEWDConfig) -> SEWDConfig:
        check_sew_d_config(cfg)
        return super().check_config(cfg)

    @staticmethod
    def build_encoder(cfg: SEWDConfig) -> SqueezedDebertaEncoder:
        return SqueezedDebertaEncoder(cfg)


register_models(SEWDModel, SEWDConfig, "sew_d")
