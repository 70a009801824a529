"""SEW-D's c2p + p2c position bias in one pass of a small C kernel (``position_bias.c``), with
PyTorch's gathers as the fallback.

Why: in fp32 the two ``gather`` calls that place each term's products at every (query, key) took
about a fifth of SEW-D-mid's forward at 30 s (750 frames, 2-core Xeon): PyTorch's gather reads an
int64 index per element, and p2c's reads jump a table row per key. The kernel reads one int32 row
per distance and walks tiles whose table rows stay in the L1 cache; its result is bit-identical.

It is compiled the first time it is needed, with the machine's C compiler (``$CC``, else ``cc``),
for this CPU (``-march=native``), into ``$SEW_PLUGIN_CACHE`` (default ``~/.cache/sew_plugin``). The
file is named by a hash of the source, the compiler and the CPU's flags, so a home directory shared
by machines with different CPUs holds one build per CPU. Without a compiler, or with
``SEW_PLUGIN_KERNELS=0``, SEW-D gathers with PyTorch (the same numbers, more slowly) and says so
once. Used for fp32 on the CPU without autograd; half precision keeps the int16 gathers, which the
kernel did not beat.
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
# the kernel's two table reads ran 1.5-2x faster with them on (-mtune-ctrl is GCC's alone)
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-mtune-ctrl=use_gather"),
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


def compiler_version(compiler: str) -> str:
    return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout


def _compile(compiler: str) -> Path:
    """The kernel's shared library for this source, compiler and CPU: built once, then reused."""
    version = compiler_version(compiler)
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, platform.machine(), _cpu_flags()]).encode())
    target = cache_dir() / f"position_bias-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAG_SETS:
        # built beside the target and renamed into place: processes compiling at once never load a half-written file
        fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        done = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", partial],
                              capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            os.replace(partial, target)
            return target
        os.unlink(partial)
        errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
    raise RuntimeError(f"{compiler} could not compile {SOURCE.name}: {errors[-1][0]}")


def _load() -> Tuple[Optional[ctypes.CDLL], str]:
    if os.environ.get("SEW_PLUGIN_KERNELS", "1") == "0":
        return None, "PyTorch gathers (SEW_PLUGIN_KERNELS=0)"
    compiler = shutil.which(os.environ.get("CC") or "cc")
    try:
        if compiler is None:
            raise RuntimeError(f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH")
        library = ctypes.CDLL(str(_compile(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f"SEW-D's position bias falls back to PyTorch's gathers (same results, slower): {e}. "
                      "Install a C compiler (gcc) for the compiled kernel.", RuntimeWarning)
        return None, f"PyTorch gathers ({e})"
    library.position_bias_f32.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]
    library.position_bias_f32.restype = None
    version = (compiler_version(compiler).splitlines() or [Path(compiler).name])[0]
    return library, f"compiled kernel ({version})"


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
    _gathering.on = True
    try:
        yield
    finally:
        _gathering.on = False


def applies(products: torch.Tensor) -> bool:
    """Whether the kernel computes the bias of these (G, H, L, rows) products: fp32 on the CPU,
    nothing to differentiate or trace, not inside ``gathers()``, and a kernel built."""
    return (not getattr(_gathering, "on", False) and products.dtype == torch.float32 and products.device.type == "cpu" and not products.requires_grad
            and not torch.jit.is_tracing() and library() is not None)


def position_bias(c2p: torch.Tensor, p2c: torch.Tensor, rows_of: torch.Tensor,
                  key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(G, H, L, L) bias ``c2p[g, h, i, row(i - j)] + p2c[g, h, j, row(i - j)]``, -max at padded keys.

    ``c2p``, ``p2c``: (G, H, L, rows) fp32 products; ``rows_of``: (2L - 1,) int32, the table row of
    distance i - j at ``L - 1 - i + j``; ``key_padding_mask``: (G, L), True at padded frames.
    """
    groups, heads, length, rows = c2p.shape
    if length * rows >= 2**31:  # the kernel's int32 offsets
        raise ValueError(f"{length} frames are too many for the position bias kernel")
    c2p, p2c = c2p.contiguous(), p2c.contiguous()
    mask = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    bias = torch.empty(groups, heads, length, length)
    library().position_bias_f32(c2p.data_ptr(), p2c.data_ptr(), rows_of.data_ptr(),
                                None if mask is None else mask.data_ptr(), bias.data_ptr(),
                                groups, heads, length, rows, torch.get_num_threads())
    return bias
