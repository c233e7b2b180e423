"""What the llama.cpp tests ask of llama.cpp, as module-level functions that run in a child process.

``tests/test_gguf_llama_cpp.py`` computes our side (our model, tokenizer, chat session) in the pytest process and
calls these through ``isolation.in_child``, so that a native crash in llama.cpp (its AMX kernels crash on q8_0/q4_0
files unless repacking is off: ``tencentpretrain/llamacpp.py``) is one failing test. Arguments and results are
plain data: paths, token lists, numpy arrays, strings.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from tencentpretrain.llamacpp import open_llama

ROOT = Path(__file__).resolve().parents[1]
F32 = 0  # GGML_TYPE_F32
CTX = 512


def llama(path, **options):
    """llama.cpp on ``path`` with an f32 key/value cache (its default f16 cache is a rounding of its own: on the
    benchmark's 99M model it moves the logits by 2% of their scale, the f32 one by 4e-5, as our fp32 cache does)."""
    return open_llama(path, n_ctx=CTX, n_threads=1, verbose=False, type_k=F32, type_v=F32, **options)


def _logits(model, ids: list[int]) -> np.ndarray:
    model.reset()
    model.eval(ids)
    return np.array(model.scores[: len(ids)])


def _greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    return [token for token, _ in zip(model.generate(prompt, temp=0.0, reset=True), range(new_tokens))]


def logits(path, prompts: list[list[int]]) -> list[np.ndarray]:
    """llama.cpp's logits (T, vocab) of each prompt, each evaluated from an empty context."""
    model = llama(path, logits_all=True)
    return [_logits(model, ids) for ids in prompts]


def greedy(path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """llama.cpp's greedy continuation (``new_tokens`` tokens) of each prompt."""
    model = llama(path)
    return [_greedy(model, ids, new_tokens) for ids in prompts]


def quality(path, text: list[int], prompts: list[list[int]], new_tokens: int) -> tuple[np.ndarray, list[list[int]]]:
    """The logits of ``text`` and the greedy continuations of ``prompts``, from one load of ``path``."""
    model = llama(path, logits_all=True)
    return _logits(model, text), [_greedy(model, ids, new_tokens) for ids in prompts]


def tokenize(path, texts: list[str]) -> list[tuple[list[int], int]]:
    """For each text: llama.cpp's tokens without bos (specials not parsed), and the first token with bos."""
    model = llama(path, vocab_only=True)
    return [(model.tokenize(text.encode("utf-8"), add_bos=False, special=False),
             model.tokenize(text.encode("utf-8"), add_bos=True)[0]) for text in texts]


def chat_template(path, messages: list[dict]) -> dict:
    """How llama.cpp renders ``messages`` through the file's chat template: the tokens of the rendered prompt
    (specials parsed, as ``create_chat_completion`` tokenises it), the prompt tokens it counts, and the error it
    gives for the messages without their system and first user turn."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    model = llama(path)
    formatter = Jinja2ChatFormatter(model.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    rendered = formatter(messages=messages).prompt
    counted = model.create_chat_completion(messages, max_tokens=1, temperature=0.0)["usage"]["prompt_tokens"]
    try:
        model.create_chat_completion(messages[2:], max_tokens=1)
        error = None
    except ValueError as err:
        error = str(err)
    return {"tokens": model.tokenize(rendered.encode("utf-8"), add_bos=False, special=True),
            "prompt_tokens": counted, "error": error}


def chat_answers(path, conversations: list[list[dict]], max_tokens: int) -> list[str]:
    """llama.cpp's greedy answer (``create_chat_completion``) to the last user message of each conversation."""
    model = llama(path)
    return [model.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0)
            ["choices"][0]["message"]["content"] for messages in conversations]


def main_of(relative: str, argv: list[str]):
    """``main(argv)`` of the script at ``relative`` (from the repository root): a CLI that runs llama.cpp."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def loaded_repacking(path, repack: str) -> tuple[bool, float]:
    """Whether llama.cpp loaded ``path`` with its extra buffer types (repacking) under ``repack``, and the sum of
    the logits of a short prompt (so that the file is evaluated, not only loaded)."""
    model = open_llama(path, repack, n_ctx=64, n_threads=1, verbose=False, type_k=F32, type_v=F32)
    model.eval([1, 5, 9, 7])
    return bool(model.model_params.use_extra_bufts), float(np.sum(model.scores[3]))
