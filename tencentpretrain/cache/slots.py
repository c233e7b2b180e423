"""The KV cache of continuous batching: one row per running request, rows joining and leaving between steps.

All rows share the cache's column pointer ``length``: a decoding step writes every row's new key at column
``length``. A row's own tokens fill a contiguous span of columns ending at ``length``; the columns before its span
are masked out (``mask``), exactly like left padding, and its rotary positions are its own (``0`` for its first
token), so where its span lies changes nothing it computes. The running rows are always the first ``rows`` rows
(a leaving row is replaced by the last one), so a step computes exactly the rows in use.

When the columns run out the spans are moved right-aligned to the smallest width that holds them (``realign``);
with ``max_length`` (the columns) a request's most positions plus ``slack``, that happens at most once every ``slack``
steps.
"""

from __future__ import annotations

import torch

from tencentpretrain.cache.kv_cache import KVCache


class SlotCache(KVCache):
    """Keys and values of up to ``slots`` rows of up to ``capacity`` columns, plus each row's real-token mask.

    A ``KVCache`` (``update``, ``attend``, ``advance``, ``length``) of the first ``rows`` rows; rows are added and
    removed with ``add``/``remove``.

    Args:
        layers_num: transformer layers.
        slots: most rows (the largest batch).
        kv_heads_num: key/value heads per layer.
        capacity: columns per row.
        head_dim: width of one head.
        dtype: storage dtype (the model's).
        device: where the cache lives.
    """

    def __init__(self, layers_num: int, slots: int, kv_heads_num: int, capacity: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        super().__init__(layers_num, slots, kv_heads_num, capacity, head_dim, dtype, device)
        self.mask = torch.zeros(slots, capacity, dtype=torch.bool, device=device)  # True: a real token of the row
        self.starts = [0] * slots  # first column of each row's span
        self.rows = 0  # rows in use: 0 .. rows - 1; self.length: columns filled, the same for every row in use

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    def span(self, row: int) -> int:
        """Columns the row's tokens fill."""
        return self.length - self.starts[row]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` (rows, kv_heads, T, head_dim) at the next columns; return all filled columns."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"slot cache full: {end} columns needed, {self.max_length} allocated")
        self.keys[layer, :self.rows, :, self.length:end] = k
        self.values[layer, :self.rows, :, self.length:end] = v
        return self.keys[layer, :self.rows, :, :end], self.values[layer, :self.rows, :, :end]

    def advance(self, steps: int) -> None:
        """Mark ``steps`` more columns as filled (the model calls it after its last layer)."""
        self.length += steps

    def open_column(self) -> torch.Tensor:
        """Make room for one more token in every row in use; return the (rows, length + 1) mask for the step."""
        if self.length + 1 > self.max_length:
            self.realign(max(self.span(row) for row in range(self.rows)))
        self.mask[:self.rows, self.length] = True
        return self.mask[:self.rows, :self.length + 1]

    def add(self, cache: KVCache) -> int:
        """Append a row holding the ``cache.length`` positions of a one-row ``cache`` (a prefilled prompt).

        Returns:
            The new row's index.
        """
        if self.rows == self.slots:
            raise ValueError(f"all {self.slots} slots are in use")
        span = cache.length
        if self.rows == 0:
            self.length = 0
        if span > self.length:
            self.realign(span)
        row, start = self.rows, self.length - span
        self.keys[:, row, :, start:self.length] = cache.keys[:, 0, :, :span]
        self.values[:, row, :, start:self.length] = cache.values[:, 0, :, :span]
        self.mask[row] = False
        self.mask[row, start:self.length] = True
        self.starts[row] = start
        self.rows += 1
        return row

    def remove(self, row: int) -> int | None:
        """Free ``row``; the last row moves into its place. Returns the index the moved row had (or None)."""
        last = self.rows - 1
        self.rows -= 1
        if row == last:
            return None
        self.keys[:, row, :, :self.length] = self.keys[:, last, :, :self.length]
        self.values[:, row, :, :self.length] = self.values[:, last, :, :self.length]
        self.mask[row] = self.mask[last]
        self.starts[row] = self.starts[last]
        return last

    def realign(self, length: int) -> None:
        """Move every row's span to end at column ``length`` (at least the longest span, at most the capacity)."""
        if not max((self.span(r) for r in range(self.rows)), default=0) <= length <= self.max_length:
            raise ValueError(f"cannot realign to {length} columns")
        for row in range(self.rows):
            span, start = self.span(row), self.starts[row]
            new_start = length - span
            if new_start != start:
                for buffer in (self.keys, self.values):
                    buffer[:, row, :, new_start:length] = buffer[:, row, :, start:self.length].clone()
                self.mask[row] = False
                self.mask[row, new_start:length] = True
                self.starts[row] = new_start
        self.length = length
