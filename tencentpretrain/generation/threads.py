"""Decoding one row on several cores.

PyTorch multiplies a single input row by a weight (a matrix-vector product: decoding at batch 1) on one thread,
whatever ``torch.set_num_threads`` says, so batch-1 decoding leaves the other cores idle although it is bound by
reading the weights from memory, which more cores do faster. ``use_threads(model, n)`` splits the one-row work of
the large layers into ``n`` pieces computed at once by the calling thread and ``n - 1`` workers of a
``ThreadTeam`` (PyTorch releases the GIL inside its operators):

- a gated feed-forward block (``ThreadedGatedFeedForward``) as one task per thread: each takes a slice of the
  feed-forward width, computes its gate, up-projection and activation and its share of the down-projection, and the
  shares are summed: one hand-off per block instead of three;
- any other large linear layer (``ThreadedLinear``: attention's query and output projections, the LM head) by
  output columns, and so the dense copy that the ``both`` weight layout keeps of oneDNN-packed layers for one-row
  inputs (layers packed without it, the ``packed`` layout, are left to oneDNN).

Each hand-off costs some tens of microseconds, so small layers are left alone (``SPLIT_MIN_WEIGHTS``). The results
equal the one-thread ones up to float rounding (the greedy tokens are the same, tested). Inputs of several rows
(prefill, batches) go to PyTorch's own threads as before; during a one-token forward pass PyTorch itself is set to
one thread, so that its OpenMP threads (which attention uses, and which spin for a while after each parallel
region) do not compete with the team for the cores (measured: docs/benchmarks.md, "Serving"), except in a model
with layers packed for oneDNN without a dense copy (the ``packed`` layout), which need PyTorch's threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tencentpretrain.generation.layout import PackedLinear
from tencentpretrain.layers.feed_forward import GatedFeedForward

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


def column_slices(size: int, threads: int) -> list[tuple[int, int]]:
    """``size`` split into at most ``threads`` ranges of whole 16-column blocks."""
    per_thread = -(-size // threads)
    step = -(-per_thread // 16) * 16
    return [(lo, min(lo + step, size)) for lo in range(0, size, step)]


def one_row(x: torch.Tensor, features: int) -> bool:
    """Whether ``x`` is a single row of ``features`` outside autograd (grad mode is per thread: workers run
    without it)."""
    return x.numel() == features and not torch.is_grad_enabled()


class ColumnSplit:
    """A one-row product ``x @ weight.T + bias`` computed by output columns over a ``ThreadTeam`` (holds views of
    the weight as it is laid out now).

    Args:
        weight: the (out, in) weight.
        bias: the (out,) bias or None.
        team: the threads.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, team: ThreadTeam):
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        self.team = team
        self.pieces = [(weight[lo:hi], None if bias is None else bias[lo:hi])  # views
                       for lo, hi in column_slices(weight.shape[0], team.threads)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) with one row -> (..., out)."""

        def product(weight: torch.Tensor, bias: torch.Tensor | None) -> Callable[[], torch.Tensor]:
            return lambda: F.linear(x, weight, bias)

        return torch.cat(self.team.run([product(w, b) for w, b in self.pieces]), dim=-1)


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
        self.split = ColumnSplit(linear.weight, linear.bias, team)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        if not one_row(x, self.in_features) or len(self.split.pieces) < 2:
            return F.linear(x, self.weight, self.bias)
        return self.split(x)


class ThreadedGatedFeedForward(nn.Module):
    """A ``GatedFeedForward`` (same submodules and parameters) whose one-row forward is one task per thread over
    a slice of the feed-forward width; the partial down-projections are summed.

    Args:
        block: the feed-forward block; its layers are shared, not copied.
        team: the threads.
    """

    def __init__(self, block: GatedFeedForward, team: ThreadTeam):
        super().__init__()
        self.linear_gate, self.linear_1, self.linear_2, self.act = (block.linear_gate, block.linear_1,
                                                                    block.linear_2, block.act)
        self.team = team
        gate, up, down = (layer.weight.detach() for layer in (self.linear_gate, self.linear_1, self.linear_2))
        gate_bias, up_bias = (None if layer.bias is None else layer.bias.detach()
                              for layer in (self.linear_gate, self.linear_1))
        self.pieces = [(gate[lo:hi], None if gate_bias is None else gate_bias[lo:hi], up[lo:hi],
                        None if up_bias is None else up_bias[lo:hi], down[:, lo:hi])  # views
                       for lo, hi in column_slices(gate.shape[0], team.threads)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (..., hidden)."""
        if not one_row(x, self.linear_gate.in_features) or len(self.pieces) < 2:
            return self.linear_2(self.act(self.linear_gate(x)) * self.linear_1(x))

        def share(gate, gate_bias, up, up_bias, down) -> Callable[[], torch.Tensor]:
            return lambda: F.linear(self.act(F.linear(x, gate, gate_bias)) * F.linear(x, up, up_bias), down)

        parts = self.team.run([share(*piece) for piece in self.pieces])  # each (..., hidden)
        out = torch.stack(parts).sum(0)
        return out if self.linear_2.bias is None else out + self.linear_2.bias


def use_threads(model: nn.Module, threads: int) -> ThreadTeam | None:
    """Run ``model`` on ``threads`` cores: ``torch.set_num_threads(threads)`` and, for ``threads > 1``, its gated
    feed-forward blocks and its other large plain ``nn.Linear`` layers replaced in place by their threaded
    versions. Apply it after the weight layout (the threaded modules hold views of the weights as they are laid out
    then); layers the layout packed for oneDNN stay as they are (oneDNN uses PyTorch's threads itself).

    Returns:
        The team of threads (None for one thread).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if threads == 1:
        return None
    team = ThreadTeam(threads)
    blocks = [(name, m) for name, m in model.named_modules() if type(m) is GatedFeedForward
              and all(type(layer) is nn.Linear for layer in (m.linear_gate, m.linear_1, m.linear_2))
              and m.linear_gate.weight.numel() >= SPLIT_MIN_WEIGHTS]
    for name, block in blocks:
        replace_module(model, name, ThreadedGatedFeedForward(block, team))
    inside = {id(layer) for _, block in blocks for layer in (block.linear_gate, block.linear_1, block.linear_2)}
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear
               and m.weight.numel() >= SPLIT_MIN_WEIGHTS and id(m) not in inside]
    for name, linear in linears:
        replace_module(model, name, ThreadedLinear(linear, team))
    for packed in [m for m in model.modules() if isinstance(m, PackedLinear) and m.weight is not None]:
        packed.one_row = ColumnSplit(packed.weight, packed.bias, team)  # the "both" layout's dense copy
    if not any(isinstance(m, PackedLinear) and m.weight is None for m in model.modules()):
        switch = OneTokenThreads(threads)  # only where the team does the one-row products, not oneDNN
        model.register_forward_pre_hook(switch.before)
        model.register_forward_hook(switch.after)
    return team


class OneTokenThreads:
    """Forward hooks setting PyTorch to one thread while the model runs one token, and back to ``threads``.

    Args:
        threads: PyTorch's threads the rest of the time.
    """

    def __init__(self, threads: int):
        self.threads = threads

    def before(self, _module: nn.Module, args: tuple) -> None:
        one_token = bool(args) and isinstance(args[0], torch.Tensor) and args[0].numel() == 1
        torch.set_num_threads(1 if one_token else self.threads)

    def after(self, _module: nn.Module, _args: tuple, _output) -> None:
        torch.set_num_threads(self.threads)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
