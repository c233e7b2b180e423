"""Bits per character (tencentpretrain/scoring.py) against transformers' own loss on the same weights."""

from __future__ import annotations

import math

import torch
from conftest import generated_lines

from tencentpretrain.checkpoint import model_from_state
from tencentpretrain.convert import load_hf_llama
from tencentpretrain.scoring import bits_per_character, document_nll
from tencentpretrain.tokenizers import SentencePieceTokenizer


def tiny_pair(tmp_path, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_hidden_layers=2, max_position_embeddings=256, initializer_range=0.2)).eval()
    hf.save_pretrained(tmp_path / "hf")
    config, state = load_hf_llama(tmp_path / "hf")
    return hf, model_from_state(config, state)


def hf_nll(hf, ids: list[int]) -> float:
    """transformers' mean loss over the predicted tokens, times their number."""
    with torch.no_grad():
        return hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item() * (len(ids) - 1)


def test_bits_per_character_matches_transformers_loss(tiny_spm, tmp_path):
    tokenizer = SentencePieceTokenizer(tiny_spm)
    hf, ours = tiny_pair(tmp_path, tokenizer.vocab_size)
    docs = generated_lines(12, seed=4)
    nats = sum(hf_nll(hf, [tokenizer.bos_id, *tokenizer.encode(d), tokenizer.eos_id]) for d in docs)
    expected = nats / math.log(2) / sum(map(len, docs))
    assert math.isclose(bits_per_character(ours, tokenizer, docs, window=256), expected, rel_tol=1e-5)


def test_long_documents_are_scored_in_windows(tiny_spm, tmp_path):
    tokenizer = SentencePieceTokenizer(tiny_spm)
    hf, ours = tiny_pair(tmp_path, tokenizer.vocab_size)
    ids = [tokenizer.bos_id, *tokenizer.encode(" ".join(generated_lines(6, seed=5))), tokenizer.eos_id]
    window = 16
    assert len(ids) > 3 * window
    expected = sum(hf_nll(hf, ids[s:s + window + 1]) for s in range(0, len(ids) - 1, window))
    assert math.isclose(document_nll(ours, ids, window), expected, rel_tol=1e-5)
    assert document_nll(ours, ids, window) != document_nll(ours, ids, 4 * window)
