"""FLOP counting and model FLOP utilisation (MFU) against a measured matmul peak.

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s. The model FLOPs follow the PaLM paper's appendix:
``6 N`` per token for the forward and backward matmuls over the ``N`` matmul weights (embedding lookups excluded, the
LM head included), plus ``12 L H T`` for attention scores and weighted sums (``L`` layers, ``H`` = heads x head_dim,
``T`` the sequence length; the causal half is not subtracted). Recomputation for activation checkpointing is not
counted: it is overhead, not model work. The peak is measured here, on this machine, rather than read off a data sheet.

An encoder-decoder (T5, BART) is counted per source position with a target as long as the source: its decoder
layers have a self-attention, a cross-attention of the same size (queries and output on the target, keys and
values on the source) and a feed-forward layer, and both attentions' scores count in the ``12 L H T`` term.
"""

from __future__ import annotations

import time

import torch

from tencentpretrain.config import ModelConfig


def matmul_params(config: ModelConfig, vocab_size: int | None = None) -> int:
    """Weights that take part in matrix products per token: attention, feed-forward and LM head (no biases)."""
    vocab_size = vocab_size if vocab_size is not None else config.vocab_size
    if vocab_size is None:
        raise ValueError("vocabulary size unknown: set vocab_size in the config or pass it")
    hidden, kv = config.hidden_size, config.kv_heads_num * config.head_dim
    attention = 2 * hidden * config.heads_num * config.head_dim + 2 * hidden * kv  # q and output, k and v
    ffn = (3 if config.feed_forward == "gated" else 2) * hidden * config.feedforward_size
    decoder = config.decoder_layers * (2 * attention + ffn) if config.encoder_decoder else 0
    return config.layers_num * (attention + ffn) + decoder + hidden * vocab_size


def model_flops_per_token(config: ModelConfig, seq_length: int, vocab_size: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token: ``6 N + 12 L H T`` (see the module docstring).

    Args:
        config: the architecture.
        seq_length: tokens per sequence, ``T``.
        vocab_size: rows of the LM head; defaults to ``config.vocab_size``.
    """
    attention_layers = config.layers_num + (2 * config.decoder_layers if config.encoder_decoder else 0)
    attention = 12 * attention_layers * config.heads_num * config.head_dim * seq_length
    return 6.0 * matmul_params(config, vocab_size) + attention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        size: int | None = None, repeats: int = 5) -> float:
    """The best FLOP/s of a large square matmul on ``device`` in ``dtype`` (the denominator of MFU).

    Args:
        device: where to measure.
        dtype: operand dtype (float32 on CPUs; bfloat16 on GPUs that train in it).
        size: matrix side; default 2048 on a CPU (a fraction of a second per product), 8192 on a GPU.
        repeats: timed products; the fastest counts.

    Returns:
        FLOP/s (``2 size^3`` per product).
    """
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: library initialisation, GPU clocks
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOP utilisation, a fraction of ``peak_flops``."""
    return tokens_per_second * flops_per_token / peak_flops
