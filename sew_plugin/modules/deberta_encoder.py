"""The DeBERTa-v2 transformer stack of SEW-D (as in the original SEW-D release): post-LN layers around
``DisentangledSelfAttention``, a shared LayerNorm'd relative-position table.

Module names mirror the original SEW-D release (and HF ``SEWDModel``) so checkpoints map by name:
``layer.{i}.attention.self.{query,key,value}_proj``, ``layer.{i}.attention.output.{dense,LayerNorm}``,
``layer.{i}.intermediate.dense``, ``layer.{i}.output.{dense,LayerNorm}``, ``rel_embeddings``,
``LayerNorm``.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn, weights_key
from .disentangled_attention import DisentangledSelfAttention, RelativePositions, position_terms

LAYER_NORM_EPS = 1e-7  # DeBERTa's, used by every LayerNorm of the SEW-D encoder


class ResidualOutput(nn.Module):
    """``LayerNorm(x + dropout(dense(h)))``: the post-LN residual of both sub-layers."""

    def __init__(self, in_dim: int, dim: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_dim, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class Attention(nn.Module):
    def __init__(self, dim, heads, attention_dropout, hidden_dropout, c2p, p2c):
        super().__init__()
        self.self = DisentangledSelfAttention(dim, heads, attention_dropout, c2p, p2c)
        self.output = ResidualOutput(dim, dim, hidden_dropout)


class Intermediate(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, ffn_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.linear_gelu(self.dense, x)  # exact (erf) GELU, as DeBERTa's "gelu_python"


class DebertaLayer(nn.Module):
    def __init__(self, dim, ffn_dim, heads, attention_dropout, hidden_dropout, c2p, p2c):
        super().__init__()
        self.attention = Attention(dim, heads, attention_dropout, hidden_dropout, c2p, p2c)
        self.intermediate = Intermediate(dim, ffn_dim)
        self.output = ResidualOutput(ffn_dim, dim, hidden_dropout)

    def forward(self, x, key_padding_mask, rel_embeddings, positions, rel_key=None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        att = self.attention.self(x, key_padding_mask, rel_embeddings, positions, rel_key)
        x = self.attention.output(att, x)
        return self.output(self.intermediate(x), x)


class DebertaEncoder(nn.Module):
    """A stack of ``DebertaLayer`` sharing one relative-position table.

    Args mirror the original config: ``position_buckets`` (256) log buckets per direction up to
    ``max_position`` (512); ``pos_att_type`` "c2p", "p2c" or "p2c|c2p"; hidden dropout is the
    original's ``activation_dropout``.
    """

    def __init__(
        self, layers: int, dim: int, ffn_dim: int, heads: int, attention_dropout: float,
        hidden_dropout: float, pos_att_type: str, position_buckets: int, max_position: int,
    ):
        super().__init__()
        kinds = position_terms(pos_att_type)
        self.position_buckets, self.max_position = position_buckets, max_position
        self.hidden_dropout = hidden_dropout
        self.layer = nn.ModuleList(
            DebertaLayer(dim, ffn_dim, heads, attention_dropout, hidden_dropout, "c2p" in kinds, "p2c" in kinds)
            for _ in range(layers)
        )
        self.rel_embeddings = nn.Embedding(2 * position_buckets, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self._positions: dict = {}
        self._table: Optional[Tuple[tuple, torch.Tensor]] = None

    POSITIONS_CACHE_BYTES = 64 << 20  # bucket indices kept for recent lengths

    def relative_positions(self, length: int, device: torch.device) -> RelativePositions:
        """Bucket index for ``length`` frames, built once per (length, device) while the cache has room."""
        if torch.jit.is_tracing():
            return RelativePositions.whole_table(length, self.position_buckets, self.max_position, device)
        key = (length, str(device))
        if key not in self._positions:
            # at most index, c2p and p2c (int64, L * L each: built for PyTorch's gathers)
            held = sum(24 * p.length ** 2 for p in self._positions.values())
            if held + 24 * length * length > self.POSITIONS_CACHE_BYTES:
                self._positions.clear()
            self._positions[key] = RelativePositions(length, self.position_buckets, self.max_position, device)
        return self._positions[key]

    def position_table(self) -> Tuple[torch.Tensor, Optional[tuple]]:
        """R = LayerNorm(rel_embeddings), and a key that identifies it when it can be reused."""
        reusable = not (torch.is_grad_enabled() or torch.jit.is_tracing() or (self.training and self.hidden_dropout > 0))
        if not reusable:
            table = F.dropout(self.LayerNorm(self.rel_embeddings.weight), self.hidden_dropout, self.training)
            return table, None
        key = weights_key(self.rel_embeddings.weight, self.LayerNorm.weight, self.LayerNorm.bias)
        if self._table is None or self._table[0] != key:
            self._table = (key, self.LayerNorm(self.rel_embeddings.weight))
        return self._table[1], key

    def layer_context(self, length: int, device: torch.device) -> tuple:
        """What every layer takes besides its input and mask: (table, positions, table key)."""
        positions = self.relative_positions(length, device)
        table, rel_key = self.position_table()
        return table, positions, rel_key
