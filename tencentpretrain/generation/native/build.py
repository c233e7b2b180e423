"""Building and loading the native library from ``csrc/`` (``forward.c`` over ``kernels.c``, ``kernels.h``).

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``) into ``$TP_NATIVE_CACHE``
(default ``~/.cache/tencentpretrain``), once per version of the sources and instruction set; it needs an x86-64 CPU
with AVX2 and FMA. ``TP_NATIVE=0`` turns it off. There are builds of the same sources for several instruction sets
(``ISAS``): ``avx2``; ``avx512``, whose products of several rows use 512-bit vectors (and sum in exactly the order of
the AVX2 build: the two compute the same bits); and ``avx512vnni``. ``choose_isa`` picks the widest the CPU runs;
``TP_NATIVE_ISA=avx2`` (or another build's name) forces one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tencentpretrain.generation.native.abi import Unsupported, declare
from tencentpretrain.hardware import CPU, cpu

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "forward.c", CSRC / "kernels.c")
HEADERS = (CSRC / "kernels.h",)
NAMES = "forward.c and kernels.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fPIC", "-shared", "-pthread")
# The builds of the library: the flags each adds to FLAGS, and the CPU features (hardware.py's names) it needs (every
# AVX2 CPU has F16C; every one with AVX512-VNNI has AVX-512 VL and BW). ``avx512vnni`` is ``avx512`` whose q8_0 and
# q4_0 products sum each block's integer products with VNNI's dpbusd (the same integers as AVX2's maddubs/madd).
ISAS = {"avx2": ((), ("avx2", "fma")), "avx512": (("-mavx512f",), ("avx2", "fma", "avx512f")),
        "avx512vnni": (("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vnni"),
                       ("avx2", "fma", "avx512f", "avx512_vnni"))}


def cache_dir() -> Path:
    return Path(os.environ.get("TP_NATIVE_CACHE") or Path.home() / ".cache" / "tencentpretrain")


def choose_isa(processor: CPU, setting: str = "auto") -> str:
    """The build of the native library (a key of ``ISAS``) to run on ``processor``.

    Args:
        processor: the CPU (``hardware.cpu()``).
        setting: ``auto`` (the widest build the CPU runs: ``avx512vnni`` with AVX512-VNNI, ``avx512`` with
            AVX-512F, else ``avx2``) or a build's name (``TP_NATIVE_ISA``).

    Raises:
        Unsupported: an unknown setting, or a build the CPU cannot run.
    """
    if setting == "auto":
        return next(isa for isa in ("avx512vnni", "avx512", "avx2") if all(processor.has(f) for f in ISAS[isa][1]))
    if setting not in ISAS:
        raise Unsupported(f"TP_NATIVE_ISA={setting!r} is not auto or one of {', '.join(ISAS)}")
    missing = [flag for flag in ISAS[setting][1] if not processor.has(flag)]
    if missing:
        raise Unsupported(f"TP_NATIVE_ISA={setting} needs {', '.join(missing)}, which this CPU lacks "
                          f"({processor.kind()})")
    return setting


@functools.cache
def load_library(isa: str | None = None) -> ctypes.CDLL:
    """The compiled native library (built on first use, see the module docstring); its ``isa`` attribute names the
    build.

    Args:
        isa: the build (a key of ``ISAS``); None: ``choose_isa`` of this CPU and ``$TP_NATIVE_ISA`` (default auto).

    Raises:
        Unsupported: turned off, not an x86-64 CPU with AVX2 (or the build's features), no C compiler, or the build
            failed.
    """
    if os.environ.get("TP_NATIVE", "1") == "0":
        raise Unsupported("turned off by TP_NATIVE=0")
    if platform.machine().lower() not in ("x86_64", "amd64") or torch.backends.cpu.get_cpu_capability() not in (
            "AVX2", "AVX512"):
        raise Unsupported(f"needs an x86-64 CPU with AVX2 and FMA (this is {platform.machine()}, "
                          f"{torch.backends.cpu.get_cpu_capability()})")
    if isa is None:  # the same library as when asked for the build by name
        return load_library(choose_isa(cpu(), os.environ.get("TP_NATIVE_ISA") or "auto"))
    isa = choose_isa(cpu(), isa)
    lib = declare(ctypes.CDLL(str(built_library(isa))))
    lib.isa = isa
    return lib


def built_library(isa: str) -> Path:
    """The shared library of build ``isa`` in ``cache_dir()``, compiled first when it is not there (see the module
    docstring).

    Raises:
        Unsupported: no C compiler, or the build failed.
    """
    flags = FLAGS + ISAS[isa][0]
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise Unsupported(f"no C compiler {compiler!r} on PATH (set CC) to build {NAMES}")
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES + HEADERS) + " ".join(flags).encode())
    target = cache_dir() / f"forward-{isa}-{digest.hexdigest()[:16]}.so"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            result = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", str(out), "-lm"],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise Unsupported(f"building {NAMES} with {compiler} failed: {result.stderr.strip()[-2000:]}")
            os.replace(out, target)  # whole or not at all, also with several processes building at once
    return target
