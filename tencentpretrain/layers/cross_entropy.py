"""The LM head and cross-entropy in one step, computed in chunks of tokens, with gradients formed in the forward pass.

``F.cross_entropy(hidden @ W.T)`` keeps several (tokens, vocab) tensors alive at once: the logits, the log-softmax
for the backward pass, and two gradients of that size. With a 32000-word vocabulary those dwarf everything else in
a small model. ``linear_cross_entropy`` instead walks over chunks of tokens: for each it computes the logits, the
loss, and ``softmax - one_hot`` (the gradient of the summed loss with respect to the logits), and immediately
multiplies that gradient into the gradients of the hidden states and of the head's weight. Only one chunk of logits
exists at a time; the backward pass merely scales the stored gradients by the incoming gradient. The sums are the
same as the unfused computation up to floating-point rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 26}  # logits per chunk: 32 MiB on CPUs, 256 MiB on GPUs (fp32)
MIN_CHUNK_ROWS = 256  # fewer rows per chunk make the weight-gradient products inefficient


def chunk_rows(vocab_size: int, device: torch.device) -> int:
    """Tokens per chunk for this vocabulary size on this device."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS.get(device.type, 1 << 26) // vocab_size)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits to float32; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _chunk_loss(logits: torch.Tensor, tgt: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, ...]:
    """Summed loss of a chunk of upcast logits (rows, vocab), and the valid-row mask and clamped targets."""
    valid = tgt != ignore_index  # (rows,)
    index = tgt.clamp(min=0).unsqueeze(1)  # (rows, 1)
    picked = logits.gather(1, index).squeeze(1)  # (rows,)
    loss = ((torch.logsumexp(logits, 1) - picked) * valid).sum()
    return loss, valid, index


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias``; gradients are computed during the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tgt, ignore_index, rows):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
        grad_weight = torch.empty_like(weight) if need_weight else None  # (V, H)
        grad_bias = _upcast(torch.zeros_like(bias)) if need_bias else None  # (V,)
        total = _upcast(hidden.new_zeros(()))
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start:start + rows], tgt[start:start + rows]
            logits = _upcast(F.linear(h, weight, bias))  # (rows, V)
            loss, valid, index = _chunk_loss(logits, t, ignore_index)
            total += loss
            grad = torch.softmax(logits, 1)  # d(loss)/d(logits) = softmax - one_hot, zero on ignored rows
            grad.mul_(valid.unsqueeze(1)).scatter_add_(1, index, -valid.to(grad.dtype).unsqueeze(1))
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            grad = grad.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad, weight, out=grad_hidden[start:start + rows])
            if grad_weight is not None and start == 0:
                torch.mm(grad.t(), h, out=grad_weight)
            elif grad_weight is not None:
                grad_weight.addmm_(grad.t(), h)
        ctx.grads = [grad_hidden, grad_weight, grad_bias]
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward through the same loss twice is not supported")
        grad_hidden, grad_weight, grad_bias = (g.mul_(grad_output.to(g.dtype)) if g is not None else None
                                               for g in ctx.grads)
        ctx.grads = None
        if grad_bias is not None:
            grad_bias = grad_bias.to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tgt: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    """Summed next-token cross-entropy of the head ``(weight, bias)`` over ``hidden``, without full logits.

    Args:
        hidden: (N, H) hidden states of the positions to score.
        weight: (V, H) the LM head's weight.
        bias: (V,) or None.
        tgt: (N,) target ids; ``ignore_index`` where a position does not count.
        ignore_index: the id of positions that do not count.

    Returns:
        The loss summed over the positions that count (float32; float64 for float64 inputs).
    """
    rows = chunk_rows(weight.shape[0], hidden.device)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, tgt, ignore_index, rows)
    total = _upcast(hidden.new_zeros(()))
    for start in range(0, hidden.shape[0], rows):
        logits = _upcast(F.linear(hidden[start:start + rows], weight, bias))  # (rows, V)
        total += _chunk_loss(logits, tgt[start:start + rows], ignore_index)[0]
    return total
