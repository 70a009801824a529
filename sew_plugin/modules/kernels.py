"""The plugin's small C kernels (``modules/NAME.c``), compiled on first use for this CPU; each
caller keeps a PyTorch way of computing the same function for when one cannot be built.

A kernel is compiled the first time it is needed, with the machine's C compiler (``$CC``, else
``cc``), for this CPU (``-march=native``), into ``$SEW_PLUGIN_CACHE`` (default
``~/.cache/sew_plugin``). The file is named by a hash of the source, the compiler, the CPU's flags
and the compiler flags, so a home directory shared by machines with different CPUs holds one build
per CPU. It is written to a temporary name and renamed, so processes building at once never load a
half-written file; flag sets a compiler refused are remembered (a ``.refused`` file beside: delete
the cache folder to try them again, e.g. after installing OpenMP). Without a compiler (or a cache it
can write) the caller computes with PyTorch and says so once, naming the cause;
``SEW_PLUGIN_KERNELS=0`` asks for that without a warning.
"""

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
from typing import Dict, List, Optional, Tuple

FOLDER = Path(__file__).parent
# tried in order until one compiles. GCC's tuning for recent x86 cores turns off vector gathers;
# the position bias kernel's two table reads ran 1.5-2x faster with them on (GCC 12 names the tuning
# use_gather, later GCCs use_gather_8parts; clang takes neither). Without -fopenmp a kernel runs on
# one thread. Every set keeps IEEE arithmetic without contracting a * b + c into one rounding (the
# kernels' results are stated bit for bit, and their exponential rounds by IEEE addition), whatever
# the compiler's default (clang contracts, Intel's icx assumes fast-math).
IEEE = ("-fno-fast-math", "-ffp-contract=off")
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-mtune-ctrl=use_gather", *IEEE),
    ("-O3", "-march=native", "-fopenmp", "-mtune-ctrl=use_gather_8parts", *IEEE),
    ("-O3", "-march=native", "-fopenmp", *IEEE),
    ("-O3", *IEEE),
)

_lock = threading.Lock()
_loaded: dict = {}  # kernel name -> (the CDLL or None, what it is or why not)


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


def _build(source: Path, compiler: str, version: str) -> Tuple[Path, Tuple[str, ...]]:
    """The shared library of ``source`` for this compiler (``version``: its ``--version``) and CPU,
    with the first flag set the compiler takes, and those flags: built once, then reused. A set the
    compiler refused is remembered (``.refused`` beside), so later processes do not try it again."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    built_for = [source.read_text(), version, platform.machine(), _cpu_flags()]
    refusal = ""
    for flags in FLAG_SETS:
        key = hashlib.sha256("\0".join([*built_for, *flags]).encode())
        target = folder / f"{source.stem}-{key.hexdigest()[:16]}.so"
        refused = target.with_suffix(".refused")
        if target.exists():
            return target, flags
        if refused.exists():
            refusal = refused.read_text()
            continue
        fd, partial = tempfile.mkstemp(suffix=".partial", dir=folder)
        os.close(fd)
        try:
            done = subprocess.run([compiler, *flags, "-shared", "-fPIC", str(source), "-o", partial],
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
    raise RuntimeError(f"{compiler} compiled {source.name} with none of its flag sets: {refusal}")


Signatures = Dict[str, List[type]]  # each C function's argument types (all return void)


def _load(name: str, signatures: Signatures, fallback: str) -> Tuple[Optional[ctypes.CDLL], str]:
    switch = os.environ.get("SEW_PLUGIN_KERNELS", "1")
    if switch not in ("0", "1"):
        raise ValueError(f"SEW_PLUGIN_KERNELS={switch!r}: 0 turns the plugin's compiled kernels off, 1 (the "
                         "default) on")
    if switch == "0":  # asked for: no warning
        return None, "SEW_PLUGIN_KERNELS=0"
    compiler_path = shutil.which(compiler_name())
    source = FOLDER / f"{name}.c"
    try:
        if compiler_path is None:
            raise RuntimeError(f"no C compiler ({compiler_name()}) on PATH: install one (gcc) for the compiled kernels")
        version = compiler_version(compiler_path)
        path, flags = _build(source, compiler_path, version)
        try:
            library = ctypes.CDLL(str(path))
        except OSError:  # a cached build that no longer loads: built again, once
            path.unlink(missing_ok=True)
            path, flags = _build(source, compiler_path, version)
            library = ctypes.CDLL(str(path))
    except OSError as e:
        reason = f"{e} (the build cache is {cache_dir()}: SEW_PLUGIN_CACHE sets it)"
    except (RuntimeError, subprocess.SubprocessError) as e:
        reason = str(e)
    else:
        for function, argtypes in signatures.items():
            getattr(library, function).argtypes, getattr(library, function).restype = argtypes, None
        return library, f"compiled kernel ({(version.splitlines() or [compiler_name()])[0]}; {' '.join(flags)})"
    warnings.warn(f"{fallback}, more slowly: {reason}", RuntimeWarning)
    return None, reason


def library(name: str, signatures: Signatures, fallback: str) -> Optional[ctypes.CDLL]:
    """The compiled ``modules/{name}.c`` (its functions typed by ``signatures``), or None where it
    cannot be built or is turned off, after one warning that starts with ``fallback``. Loaded once."""
    with _lock:
        if name not in _loaded:
            _loaded[name] = _load(name, signatures, fallback)
    return _loaded[name][0]


class Kernel:
    """One kernel source: ``library()`` loads it (``library``), ``status()`` says what was loaded
    ("compiled kernel (compiler; flags)"), or what is used ``without`` it and why."""

    def __init__(self, name: str, signatures: Signatures, fallback: str, without: str):
        self.name, self.signatures, self.fallback, self.without = name, signatures, fallback, without

    def library(self) -> Optional[ctypes.CDLL]:
        return library(self.name, self.signatures, self.fallback)

    def status(self) -> str:
        built = self.library()
        described = _loaded[self.name][1]
        return described if built is not None else f"{self.without} ({described})"
