"""Generation: a KV-cached engine over batched, left-padded prompts, continuous batching, sampling, int8 weights
and chat (the HTTP API, ``generation.api``, needs the ``.[serve]`` extra and is imported on its own)."""

from tencentpretrain.generation.batching import Batcher, TextRequest, TokenRequest
from tencentpretrain.generation.engine import Engine, GenerationStream, Step, load_generation_model
from tencentpretrain.generation.prepare import prepare_for_inference
from tencentpretrain.generation.quant import Int8Linear, quantize_int8
from tencentpretrain.generation.sampling import SamplingParams, sample

__all__ = ["Batcher", "Engine", "GenerationStream", "Int8Linear", "SamplingParams", "Step", "TextRequest",
           "TokenRequest", "load_generation_model", "prepare_for_inference", "quantize_int8", "sample"]
