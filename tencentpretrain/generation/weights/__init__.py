"""Preparing a loaded model's weights for generation: quantisation (``int8.py``, ``q8.py``, ``q4.py``), the CPU
weight layout (``layout.py``) and huge pages (``hugepages.py``), applied by ``prepare.py``'s
``prepare_for_inference``."""

from tencentpretrain.generation.weights.int8 import Int8Linear, quantize_int8
from tencentpretrain.generation.weights.prepare import BLOCK_QUANTS, QUANTS, prepare_for_inference

__all__ = ["BLOCK_QUANTS", "Int8Linear", "QUANTS", "prepare_for_inference", "quantize_int8"]
