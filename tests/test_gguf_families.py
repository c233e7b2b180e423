"""GGUF for the byte-level BPE families, run by llama.cpp: Llama-3 (llama, its rope scalings), Qwen2 (qwen2: q/k/v
biases) and Qwen3 (qwen3: per-head q/k norms, explicit head size) with a ``gpt2`` vocabulary; llama.cpp's logits
and greedy tokens against our model's, its tokenisation against ours (tiny trained BPEs, and the real Llama-3 and
Qwen3 tokenizers of ../shared). Every llama.cpp call runs in a child process (``isolation.in_child``)."""

from __future__ import annotations

import importlib.util

import llama_cpp_side as side
import numpy as np
import pytest
import torch
from gguf_support import FAMILIES, family_config, random_state, script, shared_data, write_checkpoint
from isolation import in_child

pytest.importorskip("gguf")
if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)

from tencentpretrain import load_model  # noqa: E402
from tencentpretrain.config import ModelConfig  # noqa: E402
from tencentpretrain.convert.keymap import ConversionError  # noqa: E402
from tencentpretrain.generation import Engine  # noqa: E402
from tencentpretrain.tokenizers import HuggingFaceTokenizer  # noqa: E402

ABOUT = ("llama-cpp-python", "gguf")
ROWS = 416  # past the tokenizers' 400 tokens, as Qwen pads
TEXTS = ["the model reads tokens", "  two  spaces\n\n\nthree newlines", "def f(x):\n    return x + 1  # done",
         "emoji 😀 🎉 and 👍🏽 here", "mixed 中文 and English 文本", "numbers 12345 and 3.14159", "tab\tseparated"]


def llama_cpp(function, *args):
    return in_child(function, *args, about=ABOUT)


def to_gguf(model, config, tokenizer, out, outtype: str = "f32"):
    assert script("convert_llama_from_tencentpretrain_to_gguf")([
        "--input_model_path", str(model), "--config_path", str(config), "--tokenizer_path", str(tokenizer),
        "--output_model_path", str(out), "--outtype", outtype]) == 0
    return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_pair(request, tmp_path_factory, tiny_bpe, tiny_qwen_bpe):
    """(our model, its f32 GGUF, its tokenizer) of one family."""
    folder = tmp_path_factory.mktemp(request.param)
    config = family_config(request.param)
    model_path, config_path = write_checkpoint(folder, config, random_state(config, ROWS, seed=5))
    tokenizer = tiny_qwen_bpe if request.param.startswith("qwen") else tiny_bpe
    return load_model(config_path, model_path), to_gguf(model_path, config_path, tokenizer, folder / "m.gguf"), \
        HuggingFaceTokenizer(tokenizer)


def test_llama_cpp_logits_and_greedy_tokens_equal_ours(family_pair):
    ours, path, tokenizer = family_pair
    prompts = [tokenizer.encode(text)[:40] for text in TEXTS[:3]]
    for ids, got in zip(prompts, llama_cpp(side.logits, path, prompts)):
        with torch.no_grad():
            want = ours(torch.tensor([ids]))[0].numpy()
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 1e-3 * scale, (np.abs(got - want).max(), scale)
    assert llama_cpp(side.greedy, path, prompts[:1], 24) == Engine(ours).generate(prompts[:1], 24)


def test_llama_cpp_tokenises_as_we_do(family_pair):
    _, path, tokenizer = family_pair
    for text, (tokens, first) in zip(TEXTS, llama_cpp(side.tokenize, path, TEXTS), strict=True):
        assert tokens == tokenizer.encode(text), text
        assert first == (tokenizer.encode(text)[0] if tokenizer.bos_id is None else tokenizer.bos_id)


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_real_tokenizer_in_gguf_tokenises_as_transformers(tmp_path, name):
    from test_bpe_tokenizer import HARD_TEXTS, corpus_texts

    data = shared_data()
    if data is None or not (data / "tokenizers" / name / "tokenizer.json").is_file():
        pytest.skip("../shared not present")
    tokenizer = HuggingFaceTokenizer(data / "tokenizers" / name)
    rows = tokenizer.vocab_size + (-tokenizer.vocab_size % 64)
    config = family_config("qwen3" if name == "qwen3" else "llama3").replace(
        emb_size=32, hidden_size=32, heads_num=2, local_kv_heads_num=None, feedforward_size=32, layers_num=1,
        attention_head_size=None)
    model_path, config_path = write_checkpoint(tmp_path / "m", config, random_state(config, rows))
    path = to_gguf(model_path, config_path, data / "tokenizers" / name, tmp_path / "vocab.gguf")
    texts = [t for t in HARD_TEXTS + corpus_texts(60) if t and "<|" not in t]
    got = llama_cpp(side.tokenize, path, texts)
    mismatched = [text for text, (tokens, _) in zip(texts, got) if tokens != tokenizer.encode(text)]
    assert not mismatched, mismatched[:3]


def test_what_llama_cpp_does_not_compute_is_refused(tmp_path, tiny_bpe):
    for change, message in [({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0,
                                               "original_max_position_embeddings": 16}}, "'dynamic'"),
                            ({"sliding_window": 8}, "sliding_window 8")]:
        config = ModelConfig.from_dict({**family_config("llama3").to_dict(), **change})
        model_path, config_path = write_checkpoint(tmp_path / "m", config, random_state(config, ROWS))
        with pytest.raises(ConversionError, match=message):
            to_gguf(model_path, config_path, tiny_bpe, tmp_path / "x.gguf")
        assert not (tmp_path / "x.gguf").exists()
