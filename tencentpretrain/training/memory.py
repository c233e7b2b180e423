"""Process memory of a training run (Linux): the per-stage trace behind ``TP_MEMORY_TRACE=1`` and the glibc heap
policy that keeps a ZeRO-3 build from holding on to freed full parameters."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class MemoryTrace:
    """Per-stage memory of this process, printed by every rank when ``TP_MEMORY_TRACE=1``.

    ``mark(stage)`` prints the peak resident set since the previous mark (``VmHWM``, which it then resets by
    writing 5 to ``/proc/self/clear_refs``) and the resident set now, split into anonymous memory (tensors, heap)
    and file pages (mapped libraries, a memory-mapped checkpoint: page cache, shared and reclaimable).
    """

    rank: int = 0
    enabled: bool = field(default_factory=lambda: os.environ.get("TP_MEMORY_TRACE", "") not in ("", "0"))

    def mark(self, stage: str) -> None:
        if not self.enabled:
            return
        try:
            status = open("/proc/self/status", encoding="ascii").read()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
        except OSError:
            return
        mib = {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) // 1024
               for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
        print(f"[pretrain] rank {self.rank} memory after {stage}: peak {mib['VmHWM']} MiB, resident {mib['VmRSS']} "
              f"MiB (anon {mib['RssAnon']}, file {mib['RssFile']})", file=sys.stderr, flush=True)


@contextlib.contextmanager
def steady_heap(during: int = 128 * 1024, after: int = 32 * 2**20) -> Iterator[None]:
    """glibc only: while building and loading a partitioned model, serve every allocation above ``during`` bytes
    with its own mmap, so that each freed full parameter goes straight back to the OS.

    Without it glibc raises its mmap threshold to the size of the first freed block (up to 32 MiB), later full
    parameters come from the heap, and the holes they leave stay resident: ~one extra largest parameter of peak
    RSS per rank. Afterwards the threshold is fixed at ``after`` (the most glibc's own rule would reach; trim
    threshold twice that, as glibc pairs them) and free heap memory is returned with ``malloc_trim``.
    """
    libc = _glibc()
    if libc is None:
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, during)
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, after)
        libc.mallopt(m_trim_threshold, 2 * after)
        libc.malloc_trim(0)


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
