"""Generation: a KV-cached engine over batched, left-padded prompts (``engine.py``), continuous batching
(``scheduler.py``), sampling (``sampling.py``), text and chat (``text.py``, ``chat.py``), the backend that runs the
passes (``backend.py``: PyTorch, or ``native/``), the weights prepared for it (``weights/``) and the command-line
options (``options.py``). The HTTP API is ``tencentpretrain.serving``."""

from tencentpretrain.generation.engine import Engine, GenerationStream, Step
from tencentpretrain.generation.loading import load_generation_model
from tencentpretrain.generation.sampling import SamplingParams, sample
from tencentpretrain.generation.scheduler import Batcher, TextRequest, TokenRequest
from tencentpretrain.generation.weights.int8 import Int8Linear, quantize_int8
from tencentpretrain.generation.weights.prepare import prepare_for_inference

__all__ = ["Batcher", "Engine", "GenerationStream", "Int8Linear", "SamplingParams", "Step", "TextRequest",
           "TokenRequest", "load_generation_model", "prepare_for_inference", "quantize_int8", "sample"]
