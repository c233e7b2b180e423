"""What this machine's CPU can do, read once from the operating system.

The machines we run on differ: AMD EPYC with AVX2 only (bf16 arithmetic is emulated there, slower than fp32),
Intel Xeon with AVX-512 and AVX512-BF16, and Xeons that also expose AMX (bf16 matrix products faster than fp32, and
llama.cpp's AMX weight repacking, which crashes on quantised files; figures in docs/machines.md). Code that
chooses a dtype, a kernel or a llama.cpp option asks here instead of reading ``/proc/cpuinfo`` itself.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The flags that decide something in this project, as Linux names them, with the name people know them by.
FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


@dataclass(frozen=True)
class CPU:
    """The processor: its model name, logical CPUs and the flags of ``FEATURES`` it has (Linux's names)."""

    model: str
    logical_cpus: int
    flags: frozenset[str]

    def has(self, flag: str) -> bool:
        """Whether the CPU reports ``flag`` (a key of ``FEATURES``, e.g. ``"amx_bf16"``)."""
        return flag in self.flags

    @property
    def amx(self) -> bool:
        """AMX tiles usable by programs (the kernel lists the flags only when it enables their state)."""
        return self.has("amx_tile")

    @property
    def bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16); without it bf16 is emulated and very slow."""
        return self.has("avx512_bf16") or self.has("amx_bf16")

    def features(self) -> list[str]:
        """The usual names of the features it has, in ``FEATURES`` order (``["AVX2", "FMA", "AVX-512", ...]``)."""
        return [name for flag, name in FEATURES.items() if flag in self.flags]

    def kind(self) -> str:
        """One line naming the machine kind, as the docs and benchmarks print it."""
        if self.amx:
            width = "AVX-512 and AMX"
        elif self.has("avx512f"):
            width = "AVX-512" + (" with AVX512-BF16, no AMX" if self.bf16 else "")
        elif self.has("avx2"):
            width = "AVX2 only"
        else:
            width = "no AVX2"
        return f"{self.model} ({self.logical_cpus} logical CPUs; {width})"


def parse_cpuinfo(text: str) -> CPU:
    """The CPU described by the text of ``/proc/cpuinfo`` (its first processor's model name and flags)."""
    model, flags, count = "", frozenset(), 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            count += 1
        elif key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split()) & FEATURES.keys()
    return CPU(model or platform.processor() or platform.machine(), max(count, 1), flags)


@functools.cache
def cpu() -> CPU:
    """This machine's CPU (``/proc/cpuinfo``; on a system without it, the model from ``platform`` and no flags)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return CPU(platform.processor() or platform.machine(), 1, frozenset())
