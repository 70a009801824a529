"""Encoders run one layer at a time: what early exit needs (exit heads read intermediate layers, and
an utterance that has exited leaves the batch so later layers are not computed for it).

Every encoder of this plugin, and fairseq's wav2vec 2.0 ``TransformerEncoder`` (through
``SteppableTransformerEncoder``), offers the same four steps, and its ``extract_features`` is built
from them, so running the steps by hand computes exactly what the encoder computes:

- ``begin(x, padding_mask) -> LayerState``: everything before the first layer (positional
  convolution, squeeze, layer norm, dropout);
- ``run_layer(i, state)``: layer ``i`` in place on ``state``;
- ``finish(state) -> (B, T, D)``: back to 20 ms frames (upsampling for squeezed encoders);
- ``final_norm(x)``: the layer norm that fairseq's ``forward`` adds for pre-LN encoders.

An optional ``layer_hook(i, state)``, called after each layer, sees (and may narrow) the batch.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.models.wav2vec.utils import pad_to_multiple
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder

from . import layer_dropped
from .squeeze import lengths_to_padding_mask, padding_mask_to_lengths


@dataclass
class LayerState:
    """Hidden states between layers and what each layer needs besides them."""

    x: torch.Tensor  # (L, B, D) if time_first else (B, L, D), at the layer rate
    padding_mask: Optional[torch.Tensor]  # (B, L), True at padding; None when nothing is padded
    lengths: torch.Tensor  # (B,) valid frames at the layer rate
    target_len: int  # frames of the 20 ms output
    frames: torch.Tensor  # (B,) valid 20 ms frames
    time_first: bool = True
    rows: torch.Tensor = None  # (B,) which utterances of the original batch these are
    context: dict = field(default_factory=dict)  # batch-independent inputs (e.g. position tables)
    squeeze_factor: int = 1  # frames at 20 ms per frame at the layer rate

    def __post_init__(self):
        if self.rows is None:
            self.rows = torch.arange(self.lengths.numel(), device=self.lengths.device)

    def keep(self, keep: torch.Tensor) -> None:
        """Narrow the batch to the utterances where ``keep`` (B,) is True."""
        index = keep.nonzero().squeeze(1)
        self.x = self.x.index_select(1 if self.time_first else 0, index)
        if self.padding_mask is not None:
            self.padding_mask = self.padding_mask.index_select(0, index)
        self.lengths, self.frames, self.rows = self.lengths[index], self.frames[index], self.rows[index]

    def batch_first(self) -> torch.Tensor:
        return self.x.transpose(0, 1) if self.time_first else self.x


def transformer_layers(encoder) -> torch.nn.ModuleList:
    """The encoder's transformer layers, bottom first: ``layers`` of fairseq's ``TransformerEncoder``
    (and of SEW's and St-SEW's), ``encoder.layer`` of SEW-D's DeBERTa stack."""
    return encoder.layers if hasattr(encoder, "layers") else encoder.encoder.layer


def run_layers(encoder, x: torch.Tensor, padding_mask, tgt_layer=None, min_layer=0):
    """The common ``extract_features`` of the steppable encoders: (x at 20 ms, layer_results).

    ``layer_results`` are fairseq's per-layer ``(x, attn, ffn_out)`` tuples, time first, for the
    layers at or after ``min_layer`` that LayerDrop kept (when ``keep_layer_results``).
    """
    state = encoder.begin(x, padding_mask)
    layer_results = []
    hook = getattr(encoder, "layer_hook", None)
    for i in range(encoder.num_layers):
        if not layer_dropped(encoder.training, encoder.layerdrop):
            attn, ffn_out = encoder.run_layer(i, state)
            if i >= min_layer and encoder.keep_layer_results:
                x = state.x if state.time_first else state.x.transpose(0, 1)
                layer_results.append((x[: state.target_len], attn, ffn_out))  # without length padding
        if hook is not None:
            hook(i, state)
        if i == tgt_layer or state.rows.numel() == 0:
            break
    return encoder.finish(state), layer_results


class SteppableTransformerEncoder(TransformerEncoder):
    """fairseq's wav2vec 2.0 ``TransformerEncoder`` with the steps above.

    ``make_steppable`` re-classes an existing instance (weights and parameter names unchanged).
    The steps follow fairseq 0.12's ``extract_features``: zero the padding, add the positional
    convolution, post-LN layer norm, pad the length to ``required_seq_len_multiple``, dropout,
    the layers, then time back second and the length padding cropped.
    """

    keep_layer_results = True

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def begin(self, x, padding_mask) -> LayerState:
        target_len, lengths = x.size(1), padding_mask_to_lengths(padding_mask, x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # fairseq's index_put, out of place
        if self.pos_conv is not None:
            x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        # fairseq pads the sequence to required_seq_len_multiple (for speed: the frames are masked,
        # and finish() crops them again); a trace would fix the pad of one length, so it runs without
        if not torch.jit.is_tracing():
            x, pad = pad_to_multiple(x, self.required_seq_len_multiple, dim=-2, value=0)
            if pad > 0:
                padding_mask = lengths_to_padding_mask(lengths, x.size(1))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return LayerState(x.transpose(0, 1), padding_mask, lengths, target_len, lengths)

    def run_layer(self, i: int, state: LayerState):
        state.x, (attn, ffn_out) = self.layers[i](state.x, self_attn_padding_mask=state.padding_mask, need_weights=False)
        return attn, ffn_out

    def finish(self, state: LayerState) -> torch.Tensor:
        return state.x.transpose(0, 1)[:, : state.target_len]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x) if self.layer_norm_first else x

    def extract_features(self, x, padding_mask=None, tgt_layer=None, min_layer=0, corpus_key=None):
        return run_layers(self, x, padding_mask, tgt_layer, min_layer)


def make_steppable(encoder):
    """Give fairseq's ``TransformerEncoder`` the layer-wise steps (this plugin's encoders have them)."""
    if hasattr(encoder, "begin"):
        return encoder
    if type(encoder) is not TransformerEncoder:
        raise TypeError(f"{type(encoder).__name__} cannot be run layer by layer")
    encoder.__class__ = SteppableTransformerEncoder
    return encoder
