"""The one table of floating-point dtype names that flags accept.

TencentPretrain's short names (``--save_dtype``, conversion ``--dtype``, ``--fp16``/``--bf16`` precision) are the
keys of ``DTYPES``; generation's ``--dtype`` takes torch's own names (``float32``...), derived from the same table,
or ``auto`` (``auto_dtype``: bfloat16 only where it is faster).
"""

from __future__ import annotations

import torch

from tencentpretrain.hardware import CPU, cpu

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TORCH_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()}  # "float32": torch.float32


def bf16_is_faster(device: str | torch.device = "cpu", machine: CPU | None = None) -> bool:
    """Whether bfloat16 matrix products beat float32 on ``device``: GPUs with bf16 support, and CPUs with AMX.

    Measured, not assumed: without AMX (AVX512-BF16 alone, or AVX2, where bf16 is emulated) bf16 products run
    slower than fp32; the figures are in docs/machines.md.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return (machine or cpu()).amx


def auto_dtype(device: str | torch.device = "cpu", machine: CPU | None = None) -> torch.dtype:
    """``--dtype auto``: bfloat16 where it is faster than float32 (``bf16_is_faster``), else float32."""
    return torch.bfloat16 if bf16_is_faster(device, machine) else torch.float32
