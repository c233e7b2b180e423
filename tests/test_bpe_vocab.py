"""Vocabulary extension for byte-level BPE (Llama-3, Qwen): scripts/merge_tokenizers.py grows a base tokenizer.json
by the tokens of a BPE trained on a new corpus, scripts/extend_vocab.py grows the model to it,
scripts/tokenizer_stats.py compares the two; the merged tokenizer is read by transformers as we read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import generated_lines
from gguf_support import family_config, random_state, script, shared_data, write_checkpoint

from tencentpretrain.checkpoint import LM_HEAD, WORD_EMBEDDING, load_state_dict
from tencentpretrain.cli import run_cli
from tencentpretrain.tokenizers import HuggingFaceTokenizer, TokenizerError
from tencentpretrain.tokenizers.bpe_merge import merge_bpe
from tencentpretrain.tokenizers.train import train_byte_level_bpe

NEW_WORDS = "语言模型 预训练 词表扩展 中文分词 大规模语料 指令微调 注意力机制 位置编码".split()


def new_corpus(path: Path, lines: int = 300) -> Path:
    """Text full of words the tiny base never saw."""
    import random

    rng = random.Random(4)
    path.write_text("\n".join(" ".join(rng.choice(NEW_WORDS) for _ in range(8)) for _ in range(lines)) + "\n",
                    encoding="utf-8")
    return path


def merge(tmp_path, base: Path, size: int = 300) -> Path:
    argv = ["--base_tokenizer_path", str(base), "--corpus_path", str(new_corpus(tmp_path / "zh.txt")),
            "--extra_vocab_size", str(size), "--output_dir", str(tmp_path / "merged")]
    assert script("merge_tokenizers")(argv) == 0
    return tmp_path / "merged"


@pytest.mark.parametrize("which", ["tiny_bpe", "tiny_qwen_bpe"])
def test_merged_tokenizer_keeps_the_base_and_reads_the_new_text_shorter(request, tmp_path, which):
    from transformers import AutoTokenizer

    base_dir = request.getfixturevalue(which)
    merged_dir = merge(tmp_path, base_dir)
    base, merged = HuggingFaceTokenizer(base_dir), HuggingFaceTokenizer(merged_dir)
    assert merged.vocab_size > base.vocab_size
    assert [merged.id_to_piece(i) for i in range(base.vocab_size)] == [base.id_to_piece(i) for i in
                                                                       range(base.vocab_size)]
    assert merged.special_tokens == base.special_tokens and merged.end_ids == base.end_ids
    data = json.loads((merged_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    for left, right in [m.split(" ", 1) if isinstance(m, str) else m for m in data["model"]["merges"]]:
        assert vocab[left] < vocab[left + right] and vocab[right] < vocab[left + right]  # reachable in order
    held_out = [" ".join(NEW_WORDS[i:] + NEW_WORDS[:i]) for i in range(len(NEW_WORDS))]
    assert sum(map(len, merged.encode_batch(held_out))) < 0.7 * sum(map(len, base.encode_batch(held_out)))
    texts = held_out + generated_lines(40, seed=9) + ["emoji 😀 and <|im_end|> 123"]
    ids = merged.encode_batch(texts)
    assert all(merged.decode(i) == t for i, t in zip(ids, texts))
    reference = AutoTokenizer.from_pretrained(str(merged_dir))
    assert ids == [reference(t, add_special_tokens=False).input_ids for t in texts]
    assert (merged_dir / "extra_tokenizer.json").is_file() and not list(tmp_path.glob(".merged*"))


def test_real_llama3_merge_with_a_chinese_bpe(tmp_path):
    data = shared_data()
    if data is None or not (data / "tokenizers" / "llama3" / "tokenizer.json").is_file():
        pytest.skip("../shared not present")
    lines = (data / "corpora" / "clue_small_zh.txt").read_text(encoding="utf-8").splitlines()
    extra = train_byte_level_bpe(lines[:2000], tmp_path / "extra", 3000, special_tokens=(),
                                 like=data / "tokenizers" / "llama3" / "tokenizer.json")
    report = merge_bpe(data / "tokenizers" / "llama3", extra, tmp_path / "merged")
    base, merged = HuggingFaceTokenizer(data / "tokenizers" / "llama3"), HuggingFaceTokenizer(tmp_path / "merged")
    assert report.base == 128256 and report.merged == merged.vocab_size == 128256 + report.added > 128256
    assert merged.special_tokens == base.special_tokens and set(merged.end_ids) == {128001, 128009}
    held_out = lines[2000:2300]
    assert sum(map(len, merged.encode_batch(held_out))) < sum(map(len, base.encode_batch(held_out)))
    assert all(merged.decode(i) == t for i, t in zip(merged.encode_batch(held_out), held_out))


@pytest.mark.parametrize("rows", [400, 416])  # exactly the tokenizer (Llama-3), padded past it (Qwen)
def test_extend_vocab_grows_the_model_to_the_merged_bpe(tmp_path, tiny_bpe, rows):
    merged_dir = merge(tmp_path, tiny_bpe)
    base, merged = HuggingFaceTokenizer(tiny_bpe), HuggingFaceTokenizer(merged_dir)
    config = family_config("llama3").replace(allow_padded_vocab=rows > base.vocab_size)
    model_path, config_path = write_checkpoint(tmp_path / "m", config, random_state(config, rows))
    out = tmp_path / "extended.bin"
    assert script("extend_vocab")(["--input_model_path", str(model_path), "--config_path", str(config_path),
                                   "--base_tokenizer_path", str(tiny_bpe), "--tokenizer_path", str(merged_dir),
                                   "--output_model_path", str(out)]) == 0
    before, after = load_state_dict(model_path), load_state_dict(out)
    for name in (WORD_EMBEDDING, LM_HEAD):
        old, new = before[name], after[name]
        assert new.shape[0] == max(merged.vocab_size, rows)
        assert torch.equal(new[:base.vocab_size], old[:base.vocab_size])
        # the last new token that is whole characters: the mean of the rows of its text's base tokens
        token = max(i for i in range(base.vocab_size, merged.vocab_size) if "\ufffd" not in merged.decode([i]))
        parts = base.encode(merged.decode([token]))
        assert len(parts) > 1
        assert torch.allclose(new[token], old[parts].mean(dim=0), atol=1e-6)


def test_tokenizer_stats_compares_base_and_merged(tmp_path, tiny_bpe, capsys):
    merged_dir = merge(tmp_path, tiny_bpe)
    capsys.readouterr()
    assert script("tokenizer_stats")(["--corpus_path", str(tmp_path / "zh.txt"), "--tokenizer_path", str(tiny_bpe),
                                      str(merged_dir), "--json"]) == 0
    base, merged = json.loads(capsys.readouterr().out)
    assert merged["tokens"] < base["tokens"] and merged["vocab_size"] > base["vocab_size"] == 400
    assert base["byte_fallback_share"] > merged["byte_fallback_share"]


def test_bad_merges_are_refused(tmp_path, tiny_bpe, tiny_spm, capsys):
    other = train_byte_level_bpe(generated_lines(100), tmp_path / "other", 300, split=r"\s+")
    with pytest.raises(TokenizerError, match="another pre-tokenizer"):
        merge_bpe(tiny_bpe, other, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    merge_script = script("merge_tokenizers")
    argv = ["--base_tokenizer_path", str(tiny_bpe), "--extra_spm_model_path", str(tiny_spm), "--output_dir",
            str(tmp_path / "out")]
    assert run_cli(merge_script, argv) == 1
    assert "--extra_tokenizer_path or --corpus_path" in capsys.readouterr().err
    assert run_cli(merge_script, ["--output_dir", str(tmp_path / "out")]) == 1
    assert "--base_tokenizer_path" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_extend_vocab_refuses_a_bpe_that_does_not_extend_the_base(tmp_path, tiny_bpe, capsys):
    """A "merged" tokenizer trained apart (another vocabulary at the same ids) is refused naming the first id that
    differs, and nothing is written."""
    other = train_byte_level_bpe(generated_lines(300, seed=11)[::-1] + ["zzz qqq xxx"] * 50, tmp_path / "other", 450)
    config = family_config("llama3").replace(allow_padded_vocab=False)
    model_path, config_path = write_checkpoint(tmp_path / "m", config, random_state(config, 400))
    out = tmp_path / "extended.bin"
    argv = ["--input_model_path", str(model_path), "--config_path", str(config_path), "--base_tokenizer_path",
            str(tiny_bpe), "--tokenizer_path", str(other), "--output_model_path", str(out)]
    assert run_cli(script("extend_vocab"), argv) == 1
    err = capsys.readouterr().err
    assert "does not extend" in err and "id " in err and str(other) in err
    assert not out.exists()
