"""The one table of floating-point dtype names that flags accept.

TencentPretrain's short names (``--save_dtype``, conversion ``--dtype``, ``--fp16``/``--bf16`` precision) are the
keys of ``DTYPES``; generation's ``--dtype`` takes torch's own names (``float32``...), derived from the same table.
"""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TORCH_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in DTYPES.values()}  # "float32": torch.float32
