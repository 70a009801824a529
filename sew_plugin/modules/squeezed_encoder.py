"""SEW's squeezed context network around any layer stack (SEW paper, section 3.3).

``SqueezedEncoder`` is the one implementation of squeeze -> layers -> upsample; the layer stacks
are its subclasses, which build their layers and say how a squeezed sequence enters them:

- ``SqueezedTransformerEncoder``: fairseq's wav2vec 2.0 ``TransformerEncoder`` layers (SEW; with
  pooled-attention layers, St-SEW's ``StochasticSqueezedEncoder``);
- ``SqueezedDebertaEncoder`` (``sew_plugin.models.sew_d``): SEW-D's DeBERTa stack.

Every one runs layer by layer (``sew_plugin.modules.layerwise``): ``begin`` squeezes and enters the
stack, ``run_layer`` runs one layer, ``finish`` upsamples back to 20 ms with the upsampler of the
squeeze factor used. The factor of a forward is ``squeeze_factor`` (fixed at construction), or
``begin``'s argument (St-SEW picks one per forward); it travels in the ``LayerState``, so a forward
changes no attribute of the module. Parameter names: ``pos_conv.0.*``, the stack's, and
``upsample.0.*`` (one factor) or ``upsamplers.{s}.0.*`` (several, St-SEW).
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from torch import nn

from .layerwise import LayerState, SteppableTransformerEncoder, run_layers
from .squeeze import Upsample, make_strided_pos_conv, padding_mask_to_lengths, squeeze_padded


class SqueezedEncoder(nn.Module):
    """Squeeze (B, T, D) 20 ms features, run the stack's layers, upsample back to (B, T, D).

    Subclasses call ``add_squeeze`` in their constructor and define ``enter(x, padding_mask,
    lengths) -> LayerState`` (what happens between the squeeze and the first layer), ``run_layer``,
    ``final_norm`` and ``num_layers``.
    """

    keep_layer_results = True  # fairseq's contract; see sew_plugin.modules.keep_layer_results

    def add_squeeze(self, dim: int, conv_pos: int, conv_pos_groups: int, factor: int,
                    sampled_factors: Optional[Sequence[int]] = None) -> None:
        """The positional convolution at stride ``factor`` (the factor of a forward that names
        none) and its upsampler, or, with ``sampled_factors``, an upsampler for each of them > 1."""
        self.squeeze_factor = factor
        self.pos_conv = make_strided_pos_conv(dim, conv_pos, conv_pos_groups, factor)
        if sampled_factors is None:
            self.upsample = Upsample(dim, factor) if factor > 1 else None
        else:
            self.upsamplers = nn.ModuleDict({str(s): Upsample(dim, s) for s in sampled_factors if s > 1})

    def upsampler(self, factor: int) -> Optional[Upsample]:
        """The upsampler of squeeze factor ``factor`` (None when it is 1)."""
        if factor == 1:
            return None
        return self.upsamplers[str(factor)] if hasattr(self, "upsamplers") else self.upsample

    def begin(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], factor: Optional[int] = None) -> LayerState:
        """(B, T, D) features at 20 ms -> the state before the first layer, at 20 ms / ``factor``."""
        factor = factor or self.squeeze_factor
        target_len, frames = x.size(1), padding_mask_to_lengths(padding_mask, x)
        x, sq_lengths, sq_mask = squeeze_padded(x, padding_mask, self.pos_conv, factor)  # (B, L, D)
        state = self.enter(x, sq_mask, sq_lengths)
        state.target_len, state.frames, state.squeeze_factor = target_len, frames, factor
        return state

    def enter(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], lengths: torch.Tensor) -> LayerState:
        raise NotImplementedError

    def finish(self, state: LayerState) -> torch.Tensor:
        """Back to (B, T, D) at 20 ms through the upsampler of the state's squeeze factor."""
        x = state.batch_first()
        upsample = self.upsampler(state.squeeze_factor)
        return upsample(x, state.lengths, state.target_len) if upsample is not None else x

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, layer: Optional[int] = None,
                corpus_key=None):
        """fairseq's encoder call: (B, T, D) at 20 ms and (B, T) padding mask -> (B, T, D) and the
        per-layer results; the final layer norm of pre-LN stacks unless stopped at ``layer``."""
        x, layer_results = self.extract_features(x, padding_mask, tgt_layer=layer)
        return (self.final_norm(x) if layer is None else x), layer_results

    def extract_features(self, x, padding_mask=None, tgt_layer=None, min_layer=0, corpus_key=None):
        return run_layers(self, x, padding_mask, tgt_layer, min_layer)


class SqueezedTransformerEncoder(SqueezedEncoder, SteppableTransformerEncoder):
    """fairseq's wav2vec 2.0 ``TransformerEncoder`` layers (their initialisation and post-LN /
    pre-LN handling) at the squeezed rate; at s = 1 exactly wav2vec 2.0's context network.
    Parameter names: ``pos_conv.0.*``, ``layers.{i}.*``, ``layer_norm.*``, ``upsample.0.*``."""

    def __init__(self, cfg: Wav2Vec2Config, factor: int, sampled_factors: Optional[Sequence[int]] = None):
        SteppableTransformerEncoder.__init__(self, cfg, skip_pos_conv=True)
        self.add_squeeze(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, factor, sampled_factors)

    def enter(self, x, padding_mask, lengths) -> LayerState:
        """Post-LN stacks normalise the squeezed frames; then dropout, time first."""
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        return LayerState(x.transpose(0, 1), padding_mask, lengths, 0, lengths)
