"""Generation: a KV-cached engine over batched, left-padded prompts, sampling, int8 weights and chat."""

from tencentpretrain.generation.engine import Engine, GenerationStream, Step, load_generation_model
from tencentpretrain.generation.quant import Int8Linear, quantize_int8
from tencentpretrain.generation.sampling import SamplingParams, sample

__all__ = ["Engine", "GenerationStream", "Int8Linear", "SamplingParams", "Step", "load_generation_model",
           "quantize_int8", "sample"]
