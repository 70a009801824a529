"""SEW-D's c2p + p2c position bias by a small C kernel (``position_bias.c``), with PyTorch's gathers
as the fallback: in fp32 the bias in one pass, in bf16 the attention's probabilities with it.

Why: in fp32 the two ``gather`` calls that place each term's products at every (query, key) took
about a fifth of SEW-D-mid's forward at 30 s (750 frames, 2-core Xeon): PyTorch's gather reads an
int64 index per element, and p2c's reads jump a table row per key. The kernel reads one int32 row
per distance and walks tiles whose table rows stay in the L1 cache; its result is bit-identical
(``position_bias``). In bf16 the gathers, their sum, the scores and the softmax wrote and read
(L, L) tensors about ten times, and bf16 attention ran barely faster than fp32's; the kernel adds
both terms to the scores and takes their softmax in one pass (``attention``), in fp32 arithmetic
rounded once (closer to fp32 than PyTorch's bf16 steps); with AVX-512 it reads 32 table entries at
once instead of gathering them (``position_bias.c``). In fp32 that fused form was slower than
the bias and PyTorch's fused attention (0.85x at 30 s), so fp32 keeps the bias kernel.

It is compiled the first time it is needed (``kernels``); without it SEW-D gathers with PyTorch
(the same function, more slowly). Used on the CPU without autograd, in models with both position terms (the default
``p2c|c2p``), for fp32 (and int8, whose attention is fp32) and bf16; fp16 keeps the gathers.
"""

import contextlib
import ctypes
import functools
import threading
from typing import Optional

import torch

from . import kernels

_gathering = threading.local()  # inside ``gathers()``


KERNEL = kernels.Kernel(
    "position_bias",
    {"position_bias_f32": [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int],
     "position_softmax_bf16": [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_int]},
    fallback="SEW-D's position bias falls back to PyTorch's gathers", without="PyTorch gathers")
library = KERNEL.library  # the compiled kernel, or None where it cannot be built or is turned off
status = KERNEL.status  # how the position bias is computed in this process, for benchmark reports


@contextlib.contextmanager
def gathers():
    """PyTorch's gathers instead of the kernel inside this block, in this thread (for comparisons)."""
    before = getattr(_gathering, "on", False)
    _gathering.on = True
    try:
        yield
    finally:
        _gathering.on = before


def applies(tensor: torch.Tensor) -> bool:
    """Whether a kernel takes this attention's ``tensor`` (its Q, or products of it): fp32
    (``position_bias``) or bf16 (``attention``) on the CPU, nothing to differentiate or trace, not
    inside ``gathers()``, and a kernel built."""
    return (not getattr(_gathering, "on", False) and tensor.dtype in (torch.float32, torch.bfloat16)
            and tensor.device.type == "cpu" and not tensor.requires_grad
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and library() is not None)


def position_bias(c2p: torch.Tensor, p2c: torch.Tensor, rows_of: torch.Tensor,
                  key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(G, H, L, L) bias ``c2p[g, h, i, row(i - j)] + p2c[g, h, j, row(i - j)]``, -max at padded keys.

    ``c2p``, ``p2c``: (G, H, L, rows) fp32 products; ``rows_of``: (2L - 1,) int32, the table row of
    distance i - j at ``L - 1 - i + j``; ``key_padding_mask``: (G, L), True at padded frames.
    """
    groups, heads, length, rows = c2p.shape
    _check(dict(c2p=c2p, p2c=p2c), c2p.shape, torch.float32, "products")
    mask = _check_positions(rows_of, key_padding_mask, groups, length, rows)
    c2p, p2c, rows_of = c2p.contiguous(), p2c.contiguous(), rows_of.contiguous()
    bias = c2p.new_empty(groups, heads, length, length)
    with torch.profiler.record_function("sew_plugin::position_bias"):
        library().position_bias_f32(c2p.data_ptr(), p2c.data_ptr(), rows_of.data_ptr(),
                                    None if mask is None else mask.data_ptr(), bias.data_ptr(),
                                    groups, heads, length, rows, torch.get_num_threads())
    return bias


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos_key_t: torch.Tensor,
              pos_query_t: torch.Tensor, rows_of: torch.Tensor,
              key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """bf16 disentangled attention, (G, H, L, d): ``softmax_j(Q_i . K_j + c2p[i, row(i - j)] +
    p2c[j, row(i - j)]) V``, padded keys left out.

    ``q`` (already scaled), ``k``, ``v``: (G, H, L, d); ``pos_key_t``, ``pos_query_t``: the (H, d, rows)
    projected position tables (``DisentangledSelfAttention.position_tables``); ``rows_of`` and
    ``key_padding_mask`` as for ``position_bias``. The products are PyTorch's (oneDNN's bf16 kernels);
    the bias and the softmax are the kernel's, in place over the scores.
    """
    groups, heads, length, dim = q.shape
    _check(dict(q=q, k=k, v=v), q.shape, torch.bfloat16, "activations")
    rows = pos_key_t.size(-1)
    _check(dict(pos_key_t=pos_key_t, pos_query_t=pos_query_t), (heads, dim, rows), torch.bfloat16, "tables")
    mask = _check_positions(rows_of, key_padding_mask, groups, length, rows)
    rows_of = rows_of.contiguous()
    # each product one element longer than itself: the kernel's 32-bit reads of bf16 values (bf16_at)
    # read the element after the one they need
    size = groups * heads * length * rows
    c2p = torch.matmul(q, pos_key_t, out=q.new_empty(size + 1)[:size].view(groups, heads, length, rows))
    p2c = torch.matmul(k, pos_query_t, out=q.new_empty(size + 1)[:size].view(groups, heads, length, rows))
    scores = torch.matmul(q, k.transpose(-1, -2)).contiguous()  # (G, H, L, L)
    threads = torch.get_num_threads()
    work = torch.empty(threads, _tile_queries(), length, dtype=torch.float32)  # each thread's rows of fp32 sums
    with torch.profiler.record_function("sew_plugin::position_softmax"):
        library().position_softmax_bf16(scores.data_ptr(), c2p.data_ptr(), p2c.data_ptr(), rows_of.data_ptr(),
                                        None if mask is None else mask.data_ptr(), work.data_ptr(),
                                        groups, heads, length, rows, threads)
    return torch.matmul(scores, v)


@functools.lru_cache(maxsize=None)
def _tile_queries() -> int:
    """Queries per tile of ``position_softmax_bf16``: the rows of its per-thread work buffer."""
    return ctypes.c_int.in_dll(library(), "position_softmax_queries").value


def _check(tensors: dict, shape, dtype: torch.dtype, what: str) -> None:
    """What the C code assumes of the memory it is handed: ``shape``, ``dtype``, on the CPU."""
    for name, t in tensors.items():
        if t.shape != tuple(shape) or t.dtype != dtype or t.device.type != "cpu":
            raise ValueError(f"{name}: expected {dtype} CPU {what} of shape {tuple(shape)}, got "
                             f"{t.dtype} {tuple(t.shape)} on {t.device}")


def _check_positions(rows_of: torch.Tensor, key_padding_mask: Optional[torch.Tensor], groups: int, length: int,
                     rows: int) -> Optional[torch.Tensor]:
    """``rows_of`` and ``key_padding_mask`` checked for the kernels; the mask as contiguous bytes (or None)."""
    if rows_of.dtype != torch.int32 or rows_of.shape != (2 * length - 1,) or rows_of.device.type != "cpu":
        raise ValueError(f"rows_of: expected ({2 * length - 1},) int32 on the CPU, got {rows_of.dtype} "
                         f"{tuple(rows_of.shape)} on {rows_of.device}")
    if length and not 0 <= int(rows_of.min()) <= int(rows_of.max()) < rows:
        raise ValueError(f"rows_of: rows outside the products' {rows}")
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or key_padding_mask.shape != (groups, length)):
        raise ValueError(f"key_padding_mask: expected bool ({groups}, {length}), got {key_padding_mask.dtype} "
                         f"{tuple(key_padding_mask.shape)}")
    if length * rows >= 2**31:  # the kernel's int32 offsets
        raise ValueError(f"{length} frames are too many for the position bias kernel")
    return None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
