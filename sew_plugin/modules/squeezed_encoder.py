"""SEW's squeezed context network: wav2vec 2.0's transformer run at a reduced frame rate."""

from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config

from .layerwise import LayerState, SteppableTransformerEncoder
from .squeeze import Upsample, make_strided_pos_conv, padding_mask_to_lengths, squeeze_padded


class SqueezedTransformerEncoder(SteppableTransformerEncoder):
    """fairseq's wav2vec 2.0 ``TransformerEncoder`` with SEW's squeeze and upsample around it.

    Reuses fairseq's layers, initialisation and post-LN/pre-LN handling; only the positional
    convolution gains a stride and an upsampler is added (absent when s = 1, where the
    computation is exactly wav2vec 2.0's context network).
    Parameter names: ``pos_conv.0.*``, ``layers.{i}.*``, ``layer_norm.*``, ``upsample.0.*``.
    """

    def __init__(self, cfg: Wav2Vec2Config, squeeze_factor: int):
        super().__init__(cfg, skip_pos_conv=True)
        self.squeeze_factor = squeeze_factor
        self.pos_conv = make_strided_pos_conv(
            cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, squeeze_factor
        )
        self.upsample = None
        if squeeze_factor > 1:
            self.upsample = Upsample(cfg.encoder_embed_dim, squeeze_factor)

    def begin(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> LayerState:
        """(B, T, D) features at 20 ms -> squeezed, normalised (post-LN) state, time first."""
        target_len, frames = x.size(1), padding_mask_to_lengths(padding_mask, x)
        x, sq_lengths, sq_mask = squeeze_padded(x, padding_mask, self.pos_conv, self.squeeze_factor)  # (B, L, D)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        return LayerState(x.transpose(0, 1), sq_mask, sq_lengths, target_len, frames)

    def finish(self, state: LayerState) -> torch.Tensor:
        """Back to (B, T, D) at 20 ms through the upsampler of the squeeze factor in use."""
        x = state.x.transpose(0, 1)
        upsample = self.current_upsampler()
        return upsample(x, state.lengths, state.target_len) if upsample is not None else x

    def current_upsampler(self):
        """The upsampler for the squeeze factor in use (None when s = 1)."""
        return self.upsample
