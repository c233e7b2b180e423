"""T5's relative position bias: a learned score per head for each bucket of key - query distances.

Near distances get a bucket each, far ones share logarithmically wider buckets up to ``max_distance`` (beyond it
all fall in the last). The encoder's buckets are bidirectional (half for keys after the query); the decoder's are
causal (only keys at or before the query). One table serves every layer of its stack (T5 keeps it in layer 0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_DISTANCE = 128  # T5's relative_attention_max_distance


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, buckets: int,
                             max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """Bucket index of each ``key - query`` distance in ``relative`` (any shape, integers), in ``[0, buckets)``."""
    offset = torch.zeros_like(relative)
    if bidirectional:
        buckets //= 2
        offset = (relative > 0).long() * buckets  # keys after the query use the upper half
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal decoder never looks ahead
    exact = buckets // 2
    log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (buckets - exact)).long()).clamp(max=buckets - 1)
    return offset + torch.where(distance < exact, distance, far)


class RelativePositionEmbedding(nn.Module):
    """The bias table ``relative_attention_bias`` (buckets, heads), TencentPretrain's parameter name.

    Args:
        heads_num: attention heads (one bias per head and bucket).
        buckets_num: the ``relative_attention_buckets_num`` key.
        bidirectional: True in the encoder, False in the decoder.
    """

    def __init__(self, heads_num: int, buckets_num: int, bidirectional: bool):
        super().__init__()
        self.buckets_num = buckets_num
        self.bidirectional = bidirectional
        self.relative_attention_bias = nn.Embedding(buckets_num, heads_num)

    def forward(self, query_length: int, key_length: int, past: int = 0) -> torch.Tensor:
        """The bias (1, heads, query_length, key_length) for queries at ``past ..`` and keys at ``0 ..``."""
        device = self.relative_attention_bias.weight.device
        queries = torch.arange(past, past + query_length, device=device)[:, None]  # (T, 1)
        keys = torch.arange(key_length, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(keys - queries, self.bidirectional, self.buckets_num)  # (T, S)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (1, heads, T, S)
