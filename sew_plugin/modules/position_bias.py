"""SEW-D's c2p + p2c position bias by a small C kernel (``position_bias.c``), with PyTorch's gathers
as the fallback: in fp32 the bias in one pass, in bf16 the attention's probabilities with it.

Why: in fp32 the two ``gather`` calls that place each term's products at every (query, key) took
about a fifth of SEW-D-mid's forward at 30 s (750 frames, 2-core Xeon): PyTorch's gather reads an
int64 index per element, and p2c's reads jump a table row per key. The kernel reads one int32 row
per distance and walks tiles whose table rows stay in the L1 cache; its result is bit-identical
(``position_bias``). In bf16 the gathers, their sum, the scores and the softmax wrote and read
(L, L) tensors about ten times, and bf16 attention ran barely faster than fp32's; the kernel adds
both terms to the scores and takes their softmax in one pass (``attention``), in fp32 arithmetic
rounded once (closer to fp32 than PyTorch's bf16 steps). In fp32 that fused form was slower than
the bias and PyTorch's fused attention (0.85x at 30 s), so fp32 keeps the bias kernel.

It is compiled the first time it is needed, with the machine's C compiler (``$CC``, else ``cc``),
for this CPU (``-march=native``), into ``$SEW_PLUGIN_CACHE`` (default ``~/.cache/sew_plugin``). The
file is named by a hash of the source, the compiler, the CPU's flags and the compiler flags, so a
home directory shared by machines with different CPUs holds one build per CPU. Without a compiler, or with
``SEW_PLUGIN_KERNELS=0``, SEW-D gathers with PyTorch (the same function, more slowly); the first
says so once. Used on the CPU without autograd, in models with both position terms (the default
``p2c|c2p``), for fp32 (and int8, whose attention is fp32) and bf16; fp16 keeps the gathers.
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

SOURCE = Path(__file__).with_suffix(".c")
# tried in order until one compiles. GCC's tuning for recent x86 cores turns off vector gathers;
# the kernel's two table reads ran 1.5-2x faster with them on (GCC 12 names the tuning use_gather,
# later GCCs use_gather_8parts; clang takes neither). Without -fopenmp the kernel runs on one thread.
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-mtune-ctrl=use_gather"),
    ("-O3", "-march=native", "-fopenmp", "-mtune-ctrl=use_gather_8parts"),
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3",),
)

_lock = threading.Lock()
_loaded: dict = {}  # "library": the CDLL or None, "status": what bench reports
_gathering = threading.local()  # inside ``gathers()``


def cache_dir() -> Path:
    return Path(os.environ.get("SEW_PLUGIN_CACHE") or Path.home() / ".cache" / "sew_plugin")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def compiler_name() -> str:
    return os.environ.get("CC") or "cc"


def compiler_version(compiler: str) -> str:
    return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout


def _build(compiler: str, version: str) -> Tuple[Path, Tuple[str, ...]]:
    """The kernel's shared library for this source, compiler (``version``: its ``--version``) and
    CPU, with the first flag set the compiler takes, and those flags: built once, then reused. A set
    the compiler refused is remembered (``.refused`` beside), so later processes do not try it again."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    built_for = [SOURCE.read_text(), version, platform.machine(), _cpu_flags()]
    refusal = ""
    for flags in FLAG_SETS:
        key = hashlib.sha256("\0".join([*built_for, *flags]).encode())
        target = folder / f"position_bias-{key.hexdigest()[:16]}.so"
        refused = target.with_suffix(".refused")
        if target.exists():
            return target, flags
        if refused.exists():
            refusal = refused.read_text()
            continue
        # built beside the target and renamed into place: processes compiling at once never load a half-written file
        fd, partial = tempfile.mkstemp(suffix=".partial", dir=folder)
        os.close(fd)
        try:
            done = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", partial],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                os.chmod(partial, 0o755)  # mkstemp's 0600 would keep other users sharing the cache out
                os.replace(partial, target)
                return target, flags
            refusal = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            refused.write_text(refusal)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    raise RuntimeError(f"{compiler} compiled {SOURCE.name} with none of its flag sets: {refusal}")


def _load() -> Tuple[Optional[ctypes.CDLL], str]:
    switch = os.environ.get("SEW_PLUGIN_KERNELS", "1")
    if switch not in ("0", "1"):
        raise ValueError(f"SEW_PLUGIN_KERNELS={switch!r}: 0 turns SEW-D's compiled position bias off, 1 (the "
                         "default) on")
    if switch == "0":  # asked for: no warning
        return None, "PyTorch gathers (SEW_PLUGIN_KERNELS=0)"
    name = compiler_name()
    compiler = shutil.which(name)
    try:
        if compiler is None:
            raise RuntimeError(f"no C compiler ({name}) on PATH: install one (gcc) for the compiled kernel")
        version = compiler_version(compiler)
        path, flags = _build(compiler, version)
        try:
            library = ctypes.CDLL(str(path))
        except OSError:  # a cached build that no longer loads: built again, once
            path.unlink(missing_ok=True)
            path, flags = _build(compiler, version)
            library = ctypes.CDLL(str(path))
    except OSError as e:
        reason = f"{e} (the build cache is {cache_dir()}: SEW_PLUGIN_CACHE sets it)"
    except (RuntimeError, subprocess.SubprocessError) as e:
        reason = str(e)
    else:
        library.position_bias_f32.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
        library.position_softmax_bf16.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 4 + [ctypes.c_int]
        library.position_bias_f32.restype = library.position_softmax_bf16.restype = None
        return library, f"compiled kernel ({(version.splitlines() or [name])[0]}; {' '.join(flags)})"
    warnings.warn(f"SEW-D's position bias falls back to PyTorch's gathers (same results, slower): {reason}",
                  RuntimeWarning)
    return None, f"PyTorch gathers ({reason})"


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernel, or None where it cannot be built or is turned off (loaded once)."""
    with _lock:
        if "library" not in _loaded:
            _loaded["library"], _loaded["status"] = _load()
    return _loaded["library"]


def status() -> str:
    """How the position bias is built in this process, for benchmark reports."""
    library()
    return _loaded["status"]


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
    work = torch.empty(threads, 32, length)  # each thread's rows of fp32 sums (the kernel's QUERIES)
    with torch.profiler.record_function("sew_plugin::position_softmax"):
        library().position_softmax_bf16(scores.data_ptr(), c2p.data_ptr(), p2c.data_ptr(), rows_of.data_ptr(),
                                        None if mask is None else mask.data_ptr(), work.data_ptr(),
                                        groups, heads, length, rows, threads)
    return torch.matmul(scores, v)


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
