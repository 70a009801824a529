"""DeBERTa-v2 disentangled self-attention with log-bucketed relative positions (SEW-D).

Scores (as in the original SEW-D release), with d the head size and s = 1 + [c2p] + [p2c]:

    A_ij = (Q_i . K_j + Q_i . K_r[idx(i - j)] + K_j . Q_r[idx(i - j)]) / sqrt(s * d)

where ``K_r = key_proj(R)`` and ``Q_r = query_proj(R)`` project the LayerNorm'd relative-position
table ``R`` (2 * 256 buckets) with the content projections (``share_att_key``), and
``idx(r) = clamp(bucket(r) + 256, 0, 511)`` maps a distance to its log bucket.

How this is made fast (the public implementation computes the same function more slowly):

- the projected tables K_r, Q_r depend only on weights: without autograd they are computed once,
  in the inference dtype and transposed for the products, and reused until a weight changes
  (tracked with the tensors' version counters);
- only the buckets a length can reach are used (distances below L), and the table row of each
  distance is computed once per length;
- in fp32 on the CPU a compiled kernel (``position_bias``) writes both position terms and the
  padding into one additive bias in a single pass; in bf16 on the CPU another adds them to the
  scores and takes the softmax in the same pass (``position_bias.attention``); elsewhere (fp16,
  autograd, traces, one position term only, no C compiler) one ``gather`` per term writes the bias
  in the scores' layout (p2c needs no transpose and copy: 2.5x faster) and the terms are summed in place;
- in bf16 on the CPU the query, key and value projections run as one product where that is faster
  (``onednn.StackedLinear``: 1.8x at 249 rows);
- the bias is added by ``torch.nn.functional.scaled_dot_product_attention`` (by ``baddbmm`` in half
  precision on the CPU); Q is scaled before the products, so
  nothing of size (B, H, L, L) is rescaled and fp16 scores stay small;
- utterances are attended in groups whose score tensors fit in the CPU caches (at batch 8 the
  whole batch's scores would not);
- traced (``torch.jit.trace``, the ONNX export), nothing is cached and the bucket index covers the
  whole table, built from the length inside the graph, so the graph serves every length;
- no Python loop over heads or positions.
"""

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn, position_bias, weights_key


POSITION_TERMS = ("c2p", "p2c")  # content-to-position, position-to-content
HALF = (torch.bfloat16, torch.float16)


def position_terms(pos_att_type: str) -> Tuple[str, ...]:
    """The position terms a ``pos_att_type`` string names (``"p2c|c2p"`` -> ("p2c", "c2p"), in its
    order), refused by key unless each is ``c2p`` or ``p2c``."""
    terms = tuple(dict.fromkeys(t.strip() for t in str(pos_att_type).split("|") if t.strip()))
    if not set(terms) <= set(POSITION_TERMS):
        raise ValueError(f"model.pos_att_type must combine 'c2p' and 'p2c' with '|', got {pos_att_type!r}")
    return terms


def log_bucket(relative: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v2's log bucketing of relative distances: exact within +-buckets/2, log beyond.

    Computed in float32 like the reference implementations, so bucket boundaries agree exactly.
    """
    mid = buckets // 2
    sign = torch.sign(relative)
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.full_like(relative, mid - 1), relative.abs())
    log_ratio = torch.log(abs_pos.float() / mid) / torch.log(torch.tensor((max_position - 1) / mid))
    log_pos = torch.ceil(log_ratio * (mid - 1)) + mid
    return torch.where(abs_pos <= mid, relative.float(), log_pos * sign).long()


def projection_key(linear: nn.Module) -> tuple:
    """``weights_key`` of a projection's own tensors: an ``nn.Linear``'s weight and bias, or the
    buffers of an int8 copy (``modules.int8_linear``)."""
    return weights_key(*linear.parameters(recurse=False), *linear.buffers(recurse=False))


class RelativePositions:
    """The (L, L) bucket index of a length, which rows of the position table it uses, and where
    each position term's (i, j) entry lies in the flattened (L, rows) products of ``_attend``.

    ``rows_of[L - 1 - i + j]`` is the table row of distance i - j (int32, for ``position_bias``),
    offset so that it indexes rows ``[first, first + rows)`` of the 2 * buckets table directly.
    ``rows`` is a multiple of ``ROW_ALIGNMENT`` (within the table) that holds the rows the length
    reaches: SEW-D-mid's position products with the 379 rows of 10 s ran 1.2-1.3x slower than with
    384, in fp32 and bf16 (2-core Xeon with AMX; from about 25 s on, a length reaches all 512).
    For PyTorch's gathers, built when first used: ``index[i, j]`` the same row for every (i, j),
    ``c2p[i * L + j] = i * rows + index[i, j]`` and ``p2c[i * L + j] = j * rows + index[i, j]``: one
    ``gather`` each builds the (L, L) term in the scores' own layout, with no transpose or copy after it.
    """

    ROW_ALIGNMENT = 32

    def __init__(self, length: int, buckets: int, max_position: int, device: torch.device):
        span = buckets  # the table has 2 * buckets rows; distance 0 sits at row `buckets`
        distances = torch.arange(-(length - 1), length, device=device)  # (2L - 1,)
        rows = (log_bucket(distances, buckets, max_position) + span).clamp(0, 2 * span - 1)
        first, last = int(rows.min()), int(rows.max())
        aligned = -(-(last - first + 1) // self.ROW_ALIGNMENT) * self.ROW_ALIGNMENT
        self.length = length
        self.rows = min(aligned, 2 * span)
        self.first = min(first, 2 * span - self.rows)  # the window [first, first + rows) inside the table
        self.rows_of = (rows - self.first).flip(0).to(torch.int32)

    @functools.cached_property
    def index(self) -> torch.Tensor:  # (L, L)
        i = torch.arange(self.length, device=self.rows_of.device)
        return self.rows_of.long()[self.length - 1 - i[:, None] + i[None, :]]

    @functools.cached_property
    def c2p(self) -> torch.Tensor:  # (L * L,)
        return (torch.arange(self.length, device=self.index.device)[:, None] * self.rows + self.index).reshape(-1)

    @functools.cached_property
    def p2c(self) -> torch.Tensor:  # (L * L,)
        return (torch.arange(self.length, device=self.index.device)[None, :] * self.rows + self.index).reshape(-1)

    @classmethod
    def whole_table(cls, length, buckets: int, max_position: int, device: torch.device) -> "RelativePositions":
        """The index into all ``2 * buckets`` rows, computed from ``length`` with tensor operations
        only: what a trace records as a function of the length (``__init__``'s row range is a
        Python number the trace would keep)."""
        positions = cls.__new__(cls)
        i = torch.arange(length, device=device)
        relative = i[:, None] - i[None, :]
        positions.index = (log_bucket(relative, buckets, max_position) + buckets).clamp(0, 2 * buckets - 1)
        positions.length, positions.first, positions.rows, positions.rows_of = length, 0, 2 * buckets, None
        return positions  # c2p and p2c: the properties, from this index


class DisentangledSelfAttention(nn.Module):
    """Multi-head disentangled self-attention; parameters ``query_proj``, ``key_proj``, ``value_proj``."""

    CACHE_BYTES = 4 << 20  # score tensors of one attention group (about one 10 s utterance)

    def __init__(self, dim: int, heads: int, dropout: float, c2p: bool, p2c: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"encoder_embed_dim {dim} is not a multiple of encoder_attention_heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.c2p, self.p2c = c2p, p2c
        self.scale = 1.0 / math.sqrt(self.head_dim * (1 + c2p + p2c))
        self.dropout = dropout
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.value_proj = nn.Linear(dim, dim)
        self._tables: Optional[tuple] = None  # (weights key, whole tables, (rows, tables of those rows))
        self._stacked = onednn.StackedLinear()  # the three input projections as one bf16 product

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        bsz, length, _ = x.shape  # (B, L, D) -> (B, H, L, d)
        return x.view(bsz, length, self.heads, self.head_dim).transpose(1, 2)

    def _project_inputs(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> Q (scaled), K, V, each (B, H, L, d) laid out head by head once: the position,
        score and value products read them in place instead of each copying a strided view (bf16,
        10 s: 165 vs 206 us per product). In bf16 on the CPU the three projections run as one
        product (``onednn.StackedLinear``) where that is faster."""
        stacked = self._stacked.product((self.query_proj, self.key_proj, self.value_proj), x)
        if stacked is None:
            return (self._split_heads(self.query_proj(x) * self.scale).contiguous(),
                    self._split_heads(self.key_proj(x)).contiguous(),
                    self._split_heads(self.value_proj(x)).contiguous())
        bsz, length, _ = x.shape
        q, k, v = stacked.view(bsz, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).contiguous()
        return q.mul_(self.scale), k, v

    def _project(self, table: torch.Tensor) -> Tuple:
        """(R, D) position table -> (H, d, R) ``key_proj(R)^T`` and ``(query_proj(R) * scale)^T``
        (None for a term the model does not use)."""
        pos_key = self._split_heads(self.key_proj(table)[None])[0].transpose(-1, -2) if self.c2p else None
        pos_query = self._split_heads(self.query_proj(table)[None])[0] * self.scale if self.p2c else None
        return pos_key, None if pos_query is None else pos_query.transpose(-1, -2)

    def position_tables(self, rel_embeddings: torch.Tensor, rel_key: Optional[tuple], rows: slice) -> Tuple:
        """The (H, d, rows) tables of ``_project`` for the ``rows`` of R a length uses, in the
        weights' dtype (the inference dtype).

        ``rel_key`` identifies R (None: R may change, e.g. under dropout or autograd, and only the
        rows are projected). With it the whole table is projected once and reused until R or a
        projection weight changes (tensor version counters), and the rows of the latest length are
        kept contiguous, so the products read them in place.
        """
        if rel_key is None or torch.jit.is_tracing():
            self._tables = None
            return self._project(rel_embeddings[rows])
        weights = projection_key(self.query_proj) + projection_key(self.key_proj)
        key = (rel_key, weights, torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"))
        if self._tables is None or self._tables[0] != key:
            self._tables = (key, self._project(rel_embeddings), None)
        key, whole, used = self._tables
        if used is None or used[0] != (rows.start, rows.stop):
            used = ((rows.start, rows.stop), *[None if t is None else t[..., rows].contiguous() for t in whole])
            self._tables = (key, whole, used)
        return used[1], used[2]

    def _bias(self, q, k, pos_key_t, pos_query_t, positions, key_padding_mask) -> Optional[torch.Tensor]:
        """The additive (B, H, L, L) bias of both position terms and the padding (or None: neither).
        ``pos_key_t``, ``pos_query_t``: the (H, d, rows) tables of the rows ``positions`` uses."""
        bsz, _, length, _ = q.shape
        c2p = torch.matmul(q, pos_key_t) if self.c2p else None  # (B, H, L, rows): Q_i . K_r[row]
        p2c = torch.matmul(k, pos_query_t) if self.p2c else None  # (B, H, L, rows): K_j . Q_r[row]
        if c2p is not None and p2c is not None and c2p.dtype == torch.float32 and position_bias.applies(c2p):
            return position_bias.position_bias(c2p, p2c, positions.rows_of, key_padding_mask)

        def relative(products: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:  # (B, H, L, rows) -> (B, H, L, L)
            # gather, not index_select: along the last dim it ran 13x slower on the CPU. Half
            # precision without autograd is gathered as int16 (the same bits): 1.7x faster than as bf16
            index = flat.expand(bsz, self.heads, flat.numel())
            flat_products = products.flatten(-2)
            if products.dtype in HALF and not (products.requires_grad or torch.jit.is_tracing()):
                gathered = flat_products.view(torch.int16).gather(-1, index).view(products.dtype)
            else:
                gathered = flat_products.gather(-1, index)
            return gathered.view(bsz, self.heads, length, length)

        bias = None
        if c2p is not None:  # content of i -> position of (i - j): Q_i . K_r[idx(i - j)]
            bias = relative(c2p, positions.c2p)
        if p2c is not None:  # position of (i - j) -> content of j: K_j . Q_r[idx(i - j)]
            p2c = relative(p2c, positions.p2c)
            bias = p2c if bias is None else bias.add_(p2c)
        if key_padding_mask is not None:
            masked = key_padding_mask[:, None, None, :]
            min_value = torch.finfo(q.dtype).min
            if bias is None:
                bias = torch.zeros_like(masked, dtype=q.dtype).masked_fill(masked, min_value)
            else:  # the sum of the gathered terms is this call's own tensor: fill it in place
                bias = bias.masked_fill_(masked, min_value)
        return bias

    def _attend(self, q, k, v, pos_key_t, pos_query_t, positions, key_padding_mask) -> torch.Tensor:
        """Scores with the disentangled bias and their softmax-weighted values, (B, H, L, d)."""
        bsz, _, length, _ = q.shape
        if (self.c2p and self.p2c and q.dtype == torch.bfloat16 and not self.training
                and position_bias.applies(q)):
            return position_bias.attention(q, k, v, pos_key_t, pos_query_t, positions.rows_of, key_padding_mask)
        bias = self._bias(q, k, pos_key_t, pos_query_t, positions, key_padding_mask)
        explicit = bias is not None and bias.shape == (bsz, self.heads, length, length) and q.dtype in HALF
        if explicit and q.device.type == "cpu" and not (self.training or torch.jit.is_tracing()):
            # PyTorch's CPU attention kernel ran no faster in bf16 than in fp32 (1.36 vs 1.27 ms at
            # 249 frames); the products with the bias added by baddbmm ran in 0.72. The softmax
            # accumulates in fp32 inside (half-precision input, fp32 accumulator), as SDPA's does.
            heads = bsz * self.heads
            scores = torch.baddbmm(bias.view(heads, length, length), q.reshape(heads, length, -1),
                                   k.reshape(heads, length, -1).transpose(1, 2))
            return torch.bmm(scores.softmax(-1), v.reshape(heads, length, -1)).view_as(q)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0, scale=1.0
        )

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor],
        rel_embeddings: torch.Tensor,
        positions: RelativePositions,
        rel_key: Optional[tuple] = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D). ``key_padding_mask``: (B, L), True at padded frames;
        ``rel_embeddings``: the (2 * buckets, D) normalised table R, identified by ``rel_key``."""
        q, k, v = self._project_inputs(x)
        bsz, _, length, _ = q.shape

        pos_key, pos_query = self.position_tables(rel_embeddings, rel_key,
                                                  slice(positions.first, positions.first + positions.rows))
        # Attend in groups of utterances whose (H, L, L) score tensors fit in the cache together (the
        # whole batch at once when traced: the groups depend on the traced shape)
        group = max(1, self.CACHE_BYTES // (self.heads * length * max(length, positions.rows) * q.element_size()))
        if torch.jit.is_tracing() or group >= bsz:
            out = self._attend(q, k, v, pos_key, pos_query, positions, key_padding_mask)
        else:
            outs = []
            for b in range(0, bsz, group):
                mask = None if key_padding_mask is None else key_padding_mask[b : b + group]
                outs.append(self._attend(q[b : b + group], k[b : b + group], v[b : b + group], pos_key, pos_query,
                                         positions, mask))
            out = torch.cat(outs)
        out = out.transpose(1, 2).reshape(bsz, length, -1)
        if key_padding_mask is not None:  # an utterance with no frames at all attends to nothing
            out = out.masked_fill(key_padding_mask.all(-1)[:, None, None], 0.0)
        return out
