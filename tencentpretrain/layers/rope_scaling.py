"""Rotary frequencies by ``rope_scaling`` type, computed as transformers computes them (``modeling_rope_utils``).

Each entry of ``ROPE_SCALINGS`` maps ``(head_dim, theta, scaling, seq_len)`` to ``(inv_freq, attention_factor)``:
the head_dim / 2 inverse frequencies of the rotation and the factor cos and sin are multiplied by. ``seq_len`` (the
longest position in the pass, plus one) matters only to ``dynamic``. Operations and dtypes follow transformers' so
the tables agree with its to the last bit where it can: float32 tensors, Python floats for scalars.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tencentpretrain.config import RopeScaling
from tencentpretrain.registry import ROPE_SCALINGS

Frequencies = tuple[torch.Tensor, float]


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """``theta^(-2i/d)`` for i < d/2: the unscaled frequencies (d = head_dim)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None,
                    seq_len: int | None = None) -> Frequencies:
    """The inverse frequencies (head_dim / 2,) and cos/sin factor for a config's rotary settings."""
    if scaling is None:
        return default_inv_freq(head_dim, theta), 1.0
    return ROPE_SCALINGS.get(scaling.rope_type)(head_dim, theta, scaling, seq_len)


def _scaling(name: str, *required: str) -> Callable:
    """Register a frequency function under ``name``; ``required`` are the rope_scaling keys it needs."""
    def decorator(fn: Callable) -> Callable:
        fn.required = required
        return ROPE_SCALINGS.register(name)(fn)

    return decorator


@_scaling("linear", "factor")
def linear(head_dim: int, theta: float, scaling: RopeScaling, seq_len: int | None) -> Frequencies:
    """Position interpolation: every frequency divided by ``factor``."""
    return default_inv_freq(head_dim, theta) / scaling.factor, 1.0


@_scaling("dynamic", "factor", "original_max_position_embeddings")
def dynamic(head_dim: int, theta: float, scaling: RopeScaling, seq_len: int | None) -> Frequencies:
    """Dynamic NTK: past the original context the base grows with the sequence length."""
    original = scaling.original_max_position_embeddings
    factor = scaling.factor
    if seq_len is None or seq_len <= original:  # transformers' initial tables, Python floats throughout
        base = theta * ((factor * original / original) - (factor - 1)) ** (head_dim / (head_dim - 2))
    else:  # transformers' update in the forward pass: the length is an int64 tensor, the base float32
        length = torch.tensor(seq_len)
        base = theta * ((factor * length / original) - (factor - 1)) ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (base**exponents), 1.0


@_scaling("llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
def llama3(head_dim: int, theta: float, scaling: RopeScaling, seq_len: int | None) -> Frequencies:
    """Llama-3.1: long wavelengths divided by ``factor``, short ones kept, a smooth ramp between."""
    inv_freq = default_inv_freq(head_dim, theta)
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    context = scaling.original_max_position_embeddings
    low_wavelen, high_wavelen = context / low, context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@_scaling("yarn", "factor", "original_max_position_embeddings")
def yarn(head_dim: int, theta: float, scaling: RopeScaling, seq_len: int | None) -> Frequencies:
    """YaRN: interpolate the low frequencies, extrapolate the high ones, ramp between; cos/sin scaled up."""
    factor, context = scaling.factor, scaling.original_max_position_embeddings
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = _yarn_mscale(factor, scaling.mscale) / _yarn_mscale(factor, scaling.mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = scaling.beta_fast or 32, scaling.beta_slow or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns ``rotations`` times over the context
        return head_dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation = 1 - ramp  # share of the original frequency in each dimension
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - extrapolation) + 1.0 / pos_freqs * extrapolation
    return inv_freq, float(attention_factor)
