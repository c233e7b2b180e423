"""Shared fixtures: ``tiny_spm``, a small SentencePiece model trained once per test session."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests/test_isolation.py runs a pytest of its own

WORDS = ("the model reads tokens and learns to predict the next one from data "
         "instruction input output response train loss batch epoch sample "
         "数据 模型 训练 语言 中文 文本 指令 回答 问题 学习").split()


def generated_lines(count: int, seed: int = 0) -> list[str]:
    """``count`` random sentences over a small mixed English/Chinese vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(count)]


def confident_model(config: dict, vocab_size: int):
    """A model of ``config`` with large random matrices (seed 0): confident logits, so greedy choices are not
    near-ties between implementations or batch layouts."""
    import torch

    from tencentpretrain.config import ModelConfig
    from tencentpretrain.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(config), vocab_size).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="session")
def tiny_spm(tmp_path_factory) -> Path:
    """Path of a 400-piece BPE SentencePiece model (LLaMA-like: identity normalisation, byte fallback,
    so newlines survive; unk 0, bos 1, eos 2, pad 3)."""
    from tencentpretrain.tokenizers.train import train_sentencepiece

    folder = tmp_path_factory.mktemp("tiny_spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(generated_lines(400)) + "\n", encoding="utf-8")
    return train_sentencepiece(corpus, folder / "tiny", vocab_size=400)


CHATML = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def bpe_lines() -> list[str]:
    """Training text for the tiny byte-level BPEs: the generated sentences, code, emoji and odd spacing."""
    extra = ["def f(x):\n    return x + 1  # done", "emoji 😀 🎉 and 👍🏽 here", "  two  spaces\n\n\nthree newlines",
             "numbers 12345 and 3.14159", "tab\tseparated\tvalues", "mixed 中文 and English 文本"]
    return generated_lines(400) + extra * 5


@pytest.fixture(scope="session")
def tiny_bpe(tmp_path_factory) -> Path:
    """A Llama-3-like byte-level BPE directory (tokenizer.json + tokenizer_config.json), 400 tokens: bos
    <|begin_of_text|>, eos <|end_of_text|>, end of turn <|eot_id|>."""
    from tencentpretrain.tokenizers.train import train_byte_level_bpe

    return train_byte_level_bpe(bpe_lines(), tmp_path_factory.mktemp("bpe") / "llama3_like", 400)


@pytest.fixture(scope="session")
def tiny_qwen_bpe(tmp_path_factory) -> Path:
    """A Qwen-like byte-level BPE directory (single-digit split): no bos, eos <|im_end|>, pad <|endoftext|>, a
    ChatML chat template."""
    from tencentpretrain.tokenizers.train import QWEN2_SPLIT, train_byte_level_bpe

    return train_byte_level_bpe(bpe_lines(), tmp_path_factory.mktemp("bpe") / "qwen_like", 400,
                                special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None,
                                eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHATML,
                                split=QWEN2_SPLIT)
