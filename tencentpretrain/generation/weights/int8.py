"""Weight-only int8 quantisation of linear layers, one scale per output channel.

Each weight row ``w[o]`` is stored as ``round(w[o] / s[o])`` in int8 with ``s[o] = max|w[o]| / 127``, so
``x @ w.T ~= (x @ q.T) * s``. On CPU the product runs in PyTorch's int8 weight kernel
(``torch._weight_int8pack_mm``), which reads a quarter of the fp32 bytes; that kernel is vectorised for bfloat16
activations only, so the layer's input is rounded to bfloat16 there and the output cast back (part of the
measured quality cost). Elsewhere (GPU) the weight is dequantised on the fly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantisation of a (out, in) weight.

    Returns:
        The int8 weight (out, in) and the float32 scales (out,), already representable in bfloat16 so the CPU
        kernel's bfloat16 scales add no error of their own.
    """
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8)  # (out,)
    scale = scale.to(torch.bfloat16).float()
    quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()  # (out, in)
    return quantized, scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (buffers ``weight`` and ``scale``) computing in the input's dtype.

    Args:
        linear: the float layer to quantise (its bias is kept as is).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        quantized, scale = quantize_weight(linear.weight)
        self.register_buffer("weight", quantized.to(linear.weight.device))  # (out, in) int8
        self.register_buffer("scale", scale.to(linear.weight.device))  # (out,) float32
        self.register_buffer("scale_bf16", scale.to(device=linear.weight.device, dtype=torch.bfloat16))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out) in ``x``'s dtype."""
        if x.is_cpu:
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
            out = torch._weight_int8pack_mm(flat, self.weight, self.scale_bf16).to(x.dtype)  # (N, out)
            out = out.view(*x.shape[:-1], self.out_features)
        else:
            out = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_int8(model: nn.Module, include_lm_head: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` in place with an ``Int8Linear``; return the model.

    Args:
        model: a float model (eval mode; quantised models are for inference only).
        include_lm_head: also quantise the output projection ``target.lm.output_layer`` (embeddings and norms
            always stay in floating point).
    """
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)
               and (include_lm_head or not name.startswith("target."))]
    for name, module in targets:
        model.set_submodule(name, Int8Linear(module), strict=True)
    return model
