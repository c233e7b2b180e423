"""Decoding one row on several cores.

PyTorch multiplies a single input row by a weight (a matrix-vector product: decoding at batch 1) on one thread,
whatever ``torch.set_num_threads`` says, so batch-1 decoding leaves the other cores idle although it is bound by
reading the weights from memory, which more cores do faster. ``use_threads(model, n)`` splits the one-row
products of the large linear layers by output columns into ``n`` pieces computed at once: the calling thread and
``n - 1`` workers of a ``ThreadTeam`` (PyTorch releases the GIL inside its operators). Each output is the same
dot product as before (equal up to float rounding; the greedy tokens are the same, tested). Products of several rows
(prefill, batches) are left to PyTorch's own threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SPLIT_MIN_WEIGHTS = 1 << 19  # smaller products take about as long as handing work to another thread (~20-50 us)


class ThreadTeam:
    """``threads - 1`` daemon worker threads that, with the caller, run a list of functions at once.

    Args:
        threads: the number of functions run at once (the caller counts as one).
    """

    def __init__(self, threads: int):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(threads - 1)]
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()  # one caller at a time
        for i, inbox in enumerate(self.inboxes):
            threading.Thread(target=self._work, args=(inbox,), name=f"decode-{i + 1}", daemon=True).start()

    def _work(self, inbox: queue.SimpleQueue) -> None:
        while True:
            index, fn = inbox.get()
            try:
                with torch.no_grad():  # grad mode is per thread; the caller's is off (checked by ThreadedLinear)
                    self.results.put((index, fn(), None))
            except Exception as err:  # noqa: BLE001 (re-raised in the caller)
                self.results.put((index, None, err))

    def run(self, fns: Sequence[Callable[[], object]]) -> list:
        """The results of ``fns`` (at most ``threads`` of them), the first computed by the calling thread."""
        with self.lock:
            for index, (inbox, fn) in enumerate(zip(self.inboxes, fns[1:]), start=1):
                inbox.put((index, fn))
            out = [None] * len(fns)
            error = None
            try:
                out[0] = fns[0]()
            except Exception as err:  # noqa: BLE001 (wait for the workers before raising)
                error = err
            for _ in range(len(fns) - 1):
                index, result, err = self.results.get()
                out[index], error = result, error or err
            if error is not None:
                raise error
            return out


class ThreadedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, names and layout) whose one-row products are split by output columns
    over a ``ThreadTeam``.

    Args:
        linear: the layer; its weight and bias parameters are shared, not copied.
        team: the threads.
    """

    def __init__(self, linear: nn.Linear, team: ThreadTeam):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.team = team
        per_thread = -(-self.out_features // team.threads)
        step = -(-per_thread // 16) * 16  # pieces of whole 16-column blocks
        bounds = [(lo, min(lo + step, self.out_features)) for lo in range(0, self.out_features, step)]
        weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        self.pieces = [(weight[lo:hi], None if bias is None else bias[lo:hi]) for lo, hi in bounds]  # views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        if x.numel() != self.in_features or len(self.pieces) < 2 or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)

        def product(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable[[], torch.Tensor]:
            return lambda: F.linear(x, weight, bias)

        return torch.cat(self.team.run([product(w, b) for w, b in self.pieces]), dim=-1)  # (..., out)


def use_threads(model: nn.Module, threads: int) -> ThreadTeam | None:
    """Run ``model`` on ``threads`` cores: ``torch.set_num_threads(threads)`` and, for ``threads > 1``, the
    large plain ``nn.Linear`` layers replaced in place by ``ThreadedLinear``. Apply it after the weight layout
    (``ThreadedLinear`` holds views of the weights as they are laid out then).

    Returns:
        The team of threads (None for one thread).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if threads == 1:
        return None
    team = ThreadTeam(threads)
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and module.weight.numel() >= SPLIT_MIN_WEIGHTS]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ThreadedLinear(module, team))
    return team
