"""SEW-D: SEW with a DeBERTa-v2 disentangled-attention encoder (SEW paper, section 3.5).

The front end, squeeze and upsample are SEW's; the transformer is ``DebertaEncoder``. Unlike SEW
there is no LayerNorm or dropout between the squeeze and the first layer (as in the original).
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from ..modules.deberta_encoder import DebertaEncoder
from ..modules.layerwise import LayerState, run_layers
from ..modules.squeeze import Upsample, make_strided_pos_conv, padding_mask_to_lengths, squeeze_padded
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


def _pos_att_kinds(text: str) -> set:
    return {t.strip() for t in str(text).split("|") if t.strip()}


SEW_D_RULES: List[Rule] = [
    # log buckets: exact within +-buckets/2 (2 at least), log-spaced out to max_position_embeddings
    ("position_buckets", lambda v, c: 2 <= v < c.max_position_embeddings,
     "in [2, model.max_position_embeddings={c.max_position_embeddings})"),
    ("pos_att_type", lambda v, c: _pos_att_kinds(v) <= {"c2p", "p2c"}, "'c2p', 'p2c' or 'p2c|c2p'"),
]


def check_sew_d_config(cfg: SEWDConfig) -> None:
    """The original SEW-D settings are the only ones implemented; refuse others by key."""
    expected = dict(share_att_key=True, relative_attention=True, position_biased_input=False, norm_rel_ebd="layer_norm")
    for key, value in expected.items():
        if getattr(cfg, key) != value:
            raise ValueError(f"model.{key}={getattr(cfg, key)!r} is not supported (SEW-D uses {value!r})")
    check_rules(cfg, SEW_D_RULES)


class SqueezedDebertaEncoder(nn.Module):
    """Squeeze -> DeBERTa stack (``encoder``) -> upsample; fairseq's encoder call signature.

    Parameter names: ``pos_conv.0.*``, ``encoder.*`` (see ``DebertaEncoder``), ``upsample.0.*``.
    """

    def __init__(self, cfg: SEWDConfig):
        super().__init__()
        self.squeeze_factor = cfg.squeeze_factor
        self.layerdrop = cfg.encoder_layerdrop
        self.keep_layer_results = True  # fairseq's contract; see sew_plugin.modules.keep_layer_results
        self.pos_conv = make_strided_pos_conv(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, cfg.squeeze_factor)
        self.encoder = DebertaEncoder(
            cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads,
            cfg.attention_dropout, cfg.activation_dropout, cfg.pos_att_type,
            cfg.position_buckets, cfg.max_position_embeddings,
        )
        self.apply(_init_linear)
        # built after the BERT init, which would overwrite its frame-repetition start (see Upsample)
        self.upsample = Upsample(cfg.encoder_embed_dim, cfg.squeeze_factor) if cfg.squeeze_factor > 1 else None

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layer)

    def begin(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> LayerState:
        """(B, T, D) features at 20 ms -> squeezed state, batch first, with the position tables."""
        target_len, frames = x.size(1), padding_mask_to_lengths(padding_mask, x)
        x, sq_lengths, sq_mask = squeeze_padded(x, padding_mask, self.pos_conv, self.squeeze_factor)
        context = {"layer_args": self.encoder.layer_context(x.size(1), x.device)}
        return LayerState(x, sq_mask, sq_lengths, target_len, frames, time_first=False, context=context)

    def run_layer(self, i: int, state: LayerState):
        state.x = self.encoder.layer[i](state.x, state.padding_mask, *state.context["layer_args"])
        return None, None

    def finish(self, state: LayerState) -> torch.Tensor:
        if self.upsample is None:
            return state.x
        return self.upsample(state.x, state.lengths, state.target_len)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x  # every DeBERTa layer ends in its own layer norm

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, layer: Optional[int] = None, corpus_key=None):
        """(B, T, D) features at 20 ms and (B, T) padding mask -> (B, T, D) and per-layer results."""
        return run_layers(self, x, padding_mask, tgt_layer=layer)


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

    def __init__(self, cfg: SEWDConfig):
        super().__init__(cfg)
        self.encoder = SqueezedDebertaEncoder(cfg)


register_models(SEWDModel, SEWDConfig, "sew_d")
