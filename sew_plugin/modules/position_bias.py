"""SEW-D's c2p + p2c position bias in one pass of a small C kernel (``position_bias.c``), with
PyTorch's gathers as the fallback.

Why: in fp32 the two ``gather`` calls that place each term's products at every (query, key) took
about a fifth of SEW-D-mid's forward at 30 s (750 frames, 2-core Xeon): PyTorch's gather reads an
int64 index per element, and p2c's reads jump a table row per key. The kernel reads one int32 row
per distance and walks tiles whose table rows stay in the L1 cache; its result is bit-identical.

It is compiled the first time it is needed, with the machine's C compiler (``$CC``, else ``cc``),
for this CPU (``-march=native``), into ``$SEW_PLUGIN_CACHE`` (default ``~/.cache/sew_plugin``). The
file is named by a hash of the source, the compiler, the CPU's flags and the compiler flags, so a
home directory shared by machines with different CPUs holds one build per CPU. Without a compiler, or with
``SEW_PLUGIN_KERNELS=0``, SEW-D gathers with PyTorch (the same numbers, more slowly); the first
says so once. Used for fp32 on the CPU without autograd, in models with both position terms (the
default ``p2c|c2p``); half precision keeps the int16 gathers, which the kernel did not beat.
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
        library.position_bias_f32.restype = None
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


def applies(products: torch.Tensor) -> bool:
    """Whether the kernel computes the bias of these (G, H, L, rows) products: fp32 on the CPU,
    nothing to differentiate or trace, not inside ``gathers()``, and a kernel built."""
    return (not getattr(_gathering, "on", False) and products.dtype == torch.float32
            and products.device.type == "cpu" and not products.requires_grad
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and library() is not None)


def position_bias(c2p: torch.Tensor, p2c: torch.Tensor, rows_of: torch.Tensor,
                  key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(G, H, L, L) bias ``c2p[g, h, i, row(i - j)] + p2c[g, h, j, row(i - j)]``, -max at padded keys.

    ``c2p``, ``p2c``: (G, H, L, rows) fp32 products; ``rows_of``: (2L - 1,) int32, the table row of
    distance i - j at ``L - 1 - i + j``; ``key_padding_mask``: (G, L), True at padded frames.
    """
    groups, heads, length, rows = c2p.shape
    for name, t in (("c2p", c2p), ("p2c", p2c)):  # what the C code assumes of the memory it is handed
        if t.shape != c2p.shape or t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"{name}: expected fp32 CPU products of shape {tuple(c2p.shape)}, got "
                             f"{t.dtype} {tuple(t.shape)} on {t.device}")
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
    c2p, p2c, rows_of = c2p.contiguous(), p2c.contiguous(), rows_of.contiguous()
    mask = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    bias = c2p.new_empty(groups, heads, length, length)
    with torch.profiler.record_function("sew_plugin::position_bias"):
        library().position_bias_f32(c2p.data_ptr(), p2c.data_ptr(), rows_of.data_ptr(),
                                    None if mask is None else mask.data_ptr(), bias.data_ptr(),
                                    groups, heads, length, rows, torch.get_num_threads())
    return bias
