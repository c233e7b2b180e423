"""Checkpoint conversion between TencentPretrain and Hugging Face / Meta formats, one key map per family."""

from tencentpretrain.convert.bart import load_hf_bart, save_hf_bart
from tencentpretrain.convert.bert import load_hf_bert, save_hf_bert
from tencentpretrain.convert.gpt2 import load_hf_gpt2, save_hf_gpt2
from tencentpretrain.convert.hf_io import ConversionError
from tencentpretrain.convert.llama import load_hf_llama, permute_rotary, save_hf_llama
from tencentpretrain.convert.meta import load_meta_llama
from tencentpretrain.convert.t5 import load_hf_t5, save_hf_t5

__all__ = ["ConversionError", "load_hf_bart", "load_hf_bert", "load_hf_gpt2", "load_hf_llama", "load_hf_t5",
           "load_meta_llama", "permute_rotary", "save_hf_bart", "save_hf_bert", "save_hf_gpt2", "save_hf_llama",
           "save_hf_t5"]
