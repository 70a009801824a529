"""Query and key-value mean-pooled attention of St-SEW (Vyas et al., Interspeech 2022, eqs. 2-8).

``D(X, p)`` averages windows of p frames (eq. 2), ``U(X, p)`` repeats each frame p times (eq. 3),
and a layer attends with ``Qp = D(Q, S_q)``, ``Kp = D(K, S_k)``, ``Vp = D(V, S_k)`` and returns
``U(A(Qp, Kp, Vp), S_q)`` (eqs. 4-8), cropped to the input length, so the residual stream and the
feed-forward block keep the layer's input rate. No parameters are added.

Because the q/k/v projections are affine and a window mean has weights that sum to one,
``D(W x + b, p) = W D(x, p) + b``: pooling the layer input before fairseq's attention module is
the same as pooling the projected Q, K, V, and it runs the projections on the pooled, shorter
sequences. Likewise ``U`` commutes with the output projection.

Padding: a pooled frame is valid when any frame of its window is valid, and it averages only the
valid frames of its window (eq. 2's division by p would let zero padding into the tail window).
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import TransformerSentenceEncoderLayer


def mean_pool(
    x: torch.Tensor, factor: int, padding_mask: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``D(X, p)``: (B, T, C) -> (B, ceil(T / p), C) window means over valid frames, and the mask.

    ``padding_mask`` (B, T) is True at padded frames; the pooled mask is True where a window holds
    no valid frame (such frames are zero).
    """
    if factor == 1:
        return x, padding_mask
    bsz, length, dim = x.shape
    pooled_len = -(-length // factor)
    pad = pooled_len * factor - length
    valid = torch.ones(bsz, length, 1, dtype=x.dtype, device=x.device)
    if padding_mask is not None:
        valid = (~padding_mask).unsqueeze(-1).to(x.dtype)
    x = F.pad(x * valid, (0, 0, 0, pad)).view(bsz, pooled_len, factor, dim).sum(2)
    counts = F.pad(valid, (0, 0, 0, pad)).view(bsz, pooled_len, factor, 1).sum(2)
    x = x / counts.clamp(min=1)
    pooled_mask = None if padding_mask is None else counts.squeeze(-1) == 0
    return x, pooled_mask


def repeat_upsample(x: torch.Tensor, factor: int, length: int) -> torch.Tensor:
    """``U(X, p)``: (B, N, C) -> (B, length, C), each frame repeated p times, then cropped."""
    if factor == 1:
        return x[:, :length]
    return x.repeat_interleave(factor, dim=1)[:, :length]


class PooledTransformerLayer(TransformerSentenceEncoderLayer):
    """fairseq's wav2vec 2.0 transformer layer with mean-pooled queries and keys/values.

    Same parameters and names as the parent (``self_attn.*``, ``fc1``, ...); with (S_q, S_k) =
    (1, 1) it computes exactly the parent's function.
    """

    @classmethod
    def from_layer(cls, layer: TransformerSentenceEncoderLayer) -> "PooledTransformerLayer":
        """fairseq's layer, as its ``TransformerEncoder`` builds and initialises it, made pooled in
        place: the same parameters, and queries and keys may now differ in length, so k and v are
        taken from ``key`` on every code path of its attention."""
        if type(layer) is not TransformerSentenceEncoderLayer:
            raise TypeError(f"St-SEW pools fairseq's TransformerSentenceEncoderLayer, not {type(layer).__name__} "
                            "(model.layer_type must be transformer, without model.checkpoint_activations)")
        layer.__class__ = cls
        layer.self_attn.self_attention = False
        layer.self_attn.encoder_decoder_attention = True
        return layer

    def forward(self, x, self_attn_mask=None, self_attn_padding_mask=None, need_weights=False, att_args=None,
                pooling: Tuple[int, int] = (1, 1)):
        """x: (T, B, C) time first, as fairseq's layers; padding mask (B, T); ``pooling`` (S_q, S_k)."""
        s_q, s_k = pooling
        length = x.size(0)
        residual = x
        h = self.self_attn_layer_norm(x) if self.layer_norm_first else x
        h = h.transpose(0, 1)  # (B, T, C)
        query, _ = mean_pool(h, s_q, self_attn_padding_mask)
        key, key_mask = mean_pool(h, s_k, self_attn_padding_mask)
        attn, _ = self.self_attn(
            query=query.transpose(0, 1), key=key.transpose(0, 1), value=key.transpose(0, 1),
            key_padding_mask=key_mask, need_weights=False,
        )
        attn = repeat_upsample(attn.transpose(0, 1), s_q, length).transpose(0, 1)  # (T, B, C)
        x = residual + self.dropout1(attn)
        if not self.layer_norm_first:
            x = self.self_attn_layer_norm(x)

        residual = x
        h = self.final_layer_norm(x) if self.layer_norm_first else x
        h = self.fc2(self.dropout2(self.activation_fn(self.fc1(h))))
        layer_result = h
        x = residual + self.dropout3(h)
        if not self.layer_norm_first:
            x = self.final_layer_norm(x)
        return x, (None, layer_result)
