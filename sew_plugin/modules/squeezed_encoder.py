"""SEW's squeezed context network: wav2vec 2.0's transformer run at a reduced frame rate."""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder, Wav2Vec2Config

from . import layer_dropped
from .squeeze import Upsample, make_strided_pos_conv, squeeze_padded


class SqueezedTransformerEncoder(TransformerEncoder):
    """fairseq's wav2vec 2.0 ``TransformerEncoder`` with SEW's squeeze and upsample around it.

    Reuses fairseq's layers, initialisation and post-LN/pre-LN handling; only the positional
    convolution gains a stride and an upsampler is added (absent when s = 1, where the
    computation is exactly wav2vec 2.0's context network).
    Parameter names: ``pos_conv.0.*``, ``layers.{i}.*``, ``layer_norm.*``, ``upsample.0.*``.
    """

    def __init__(self, cfg: Wav2Vec2Config, squeeze_factor: int):
        super().__init__(cfg, skip_pos_conv=True)
        self.squeeze_factor = squeeze_factor
        self.keep_layer_results = True  # fairseq's contract; see sew_plugin.modules.keep_layer_results
        self.pos_conv = make_strided_pos_conv(
            cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups, squeeze_factor
        )
        self.upsample = None
        if squeeze_factor > 1:
            self.upsample = Upsample(cfg.encoder_embed_dim, squeeze_factor)

    def extract_features(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        tgt_layer: Optional[int] = None,
        min_layer: int = 0,
        corpus_key=None,
    ) -> Tuple[torch.Tensor, List[tuple]]:
        """(B, T, D) features at 20 ms -> (B, T, D) context vectors at 20 ms.

        ``layer_results`` holds fairseq's per-layer ``(x, attn, ffn_out)`` tuples at the squeezed
        rate, time first, as fairseq's encoder returns them. With ``tgt_layer`` the output after
        that layer is upsampled and returned instead of the last one.
        """
        target_len = x.size(1)
        x, sq_lengths, sq_mask = squeeze_padded(x, padding_mask, self.pos_conv, self.squeeze_factor)  # (B, L, D)

        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = x.transpose(0, 1)  # (L, B, D)

        layer_results = []
        for i, layer in enumerate(self.layers):
            if not layer_dropped(self.training, self.layerdrop):
                x, (attn, ffn_out) = layer(x, self_attn_padding_mask=sq_mask, need_weights=False)
                if i >= min_layer and self.keep_layer_results:
                    layer_results.append((x, attn, ffn_out))
            if i == tgt_layer:
                break
        x = x.transpose(0, 1)  # (B, L, D)

        upsample = self.current_upsampler()
        if upsample is not None:
            x = upsample(x, sq_lengths, target_len)
        return x, layer_results

    def current_upsampler(self):
        """The upsampler for the squeeze factor in use (None when s = 1)."""
        return self.upsample
