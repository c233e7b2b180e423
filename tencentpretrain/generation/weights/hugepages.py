"""A CPU model's weights on 2 MiB pages (Linux transparent huge pages), for streaming them from memory.

Decoding reads every weight from memory once per token. On 4 KiB pages the hardware prefetchers stop at each page
boundary and every page takes a TLB entry, so the stream of a 300 MB model restarts some 75,000 times a token; on
2 MiB pages it runs on. ``to_huge_pages`` moves a model's CPU parameters into one anonymous mapping aligned to 2 MiB
and advised ``MADV_HUGEPAGE`` (transparent huge pages in ``madvise`` or ``always`` mode): a one-row decoding step
of the 99M model is 5-12% faster (``bench/huge_pages.py``, docs/benchmarks.md). Values, shapes and strides are
unchanged and tied parameters stay tied; where the kernel gives no huge pages (THP off, memory too fragmented) the
weights simply stay on small pages, and ``to_huge_pages`` says how many bytes got huge ones. ``TP_HUGE_PAGES=0``
turns it off.
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import torch
from torch import nn

HUGE_PAGE = 2 << 20
ALIGN = 64  # each tensor starts on a cache line
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SMAPS = Path("/proc/self/smaps")


def unavailable() -> str | None:
    """Why weights cannot be put on huge pages here (None: they can)."""
    if os.environ.get("TP_HUGE_PAGES", "1") == "0":
        return "turned off by TP_HUGE_PAGES=0"
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return "transparent huge pages are Linux's"
    try:
        mode = THP.read_text()
    except OSError:
        return f"{THP} is not readable"
    if "[never]" in mode:
        return "transparent huge pages are off ([never] in /sys/kernel/mm/transparent_hugepage/enabled)"
    return None


def movable(tensor: torch.Tensor) -> bool:
    """A CPU tensor stored densely, row-major or as the transpose of a row-major matrix."""
    return tensor.device.type == "cpu" and tensor.layout == torch.strided and (
        tensor.is_contiguous() or (tensor.dim() == 2 and tensor.t().is_contiguous()))


def to_huge_pages(model: nn.Module) -> str:
    """Move ``model``'s CPU parameters onto one huge-page mapping, in place; what was done, for logs."""
    why = unavailable()
    if why is not None:
        return f"weights on small pages ({why})"
    params = [p for p in model.parameters() if movable(p)]
    distinct: dict[tuple, list[nn.Parameter]] = {}  # tied parameters move together
    for p in params:
        distinct.setdefault((p.data_ptr(), tuple(p.shape), p.stride(), p.dtype), []).append(p)
    offsets, size = [], 0
    for group in distinct.values():
        offsets.append(size)
        size += -(-group[0].numel() * group[0].element_size() // ALIGN) * ALIGN
    if size == 0:
        return "no weights to move"
    arena = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(arena, dtype=torch.uint8)  # keeps the mapping alive as long as any weight uses it
    start = -raw.data_ptr() % HUGE_PAGE
    with torch.no_grad():
        for offset, group in zip(offsets, distinct.values()):
            old = group[0].data
            nbytes = old.numel() * old.element_size()
            chunk = raw[start + offset:start + offset + nbytes].view(old.dtype)
            new = chunk.view(old.shape) if old.is_contiguous() else chunk.view(old.shape[::-1]).t()
            new.copy_(old)
            for p in group:
                p.data = new
    huge = min(huge_bytes(raw.data_ptr()), size)
    return f"weights on 2 MiB pages: {huge / 2**20:.0f} of {size / 2**20:.0f} MiB"


def huge_bytes(address: int) -> int:
    """Bytes of the mapping that holds ``address`` backed by huge pages (from /proc/self/smaps; 0 if unknown)."""
    try:
        lines = SMAPS.read_text().splitlines()
    except OSError:
        return 0
    inside = False
    for line in lines:
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    return 0
