"""Training a LLaMA-style SentencePiece model or a Llama-3-style byte-level BPE on a corpus (for new languages, tests
and the quickstart)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tencentpretrain.tokenizers.sentencepiece import TokenizerError


def train_sentencepiece(corpus_path: str | Path, model_prefix: str | Path, vocab_size: int,
                        model_type: str = "bpe", character_coverage: float = 1.0,
                        input_sentence_size: int = 2_000_000) -> Path:
    """Train a SentencePiece model set up like LLaMA's and return the ``.model`` path.

    LLaMA's settings: BPE, byte fallback (no unknown characters), digits split, identity normalisation,
    whitespace kept as is; ids unk 0, bos 1, eos 2, pad 3.

    Args:
        corpus_path: text, one sentence or document per line.
        model_prefix: output path without suffix (writes ``<prefix>.model`` and ``<prefix>.vocab``).
        vocab_size: number of pieces (at least 259 with byte fallback: 256 bytes and 3 specials).
        model_type: "bpe" or "unigram".
        character_coverage: fraction of characters covered by pieces (1.0 for small alphabets, 0.9995 for CJK).
        input_sentence_size: most lines sampled from the corpus.
    """
    import sentencepiece

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix.name}.", suffix=".tmp", dir=prefix.parent))
    try:  # trained aside, moved into place only when both files are complete
        try:
            sentencepiece.SentencePieceTrainer.train(
                input=str(corpus_path), model_prefix=str(staging / prefix.name), vocab_size=vocab_size,
                model_type=model_type, byte_fallback=True, split_digits=True, character_coverage=character_coverage,
                unk_id=0, bos_id=1, eos_id=2, pad_id=3, normalization_rule_name="identity",
                remove_extra_whitespaces=False, hard_vocab_limit=False, input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True, max_sentence_length=1 << 16, minloglevel=2,
            )
        except RuntimeError as err:
            detail = "no sentences in it" if "sentences_.empty()" in str(err) else str(err).strip()
            raise TokenizerError(f"{corpus_path}: SentencePiece training failed: {detail}") from None
        for suffix in (".vocab", ".model"):
            os.replace(staging / f"{prefix.name}{suffix}", prefix.with_name(prefix.name + suffix))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return prefix.with_name(prefix.name + ".model")


# Llama-3's pre-tokenizer split: contractions, letters with one leading non-letter, digit runs of up to three,
# punctuation runs, newlines, spaces. Qwen's is the same with single digits.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def train_byte_level_bpe(lines: list[str], out_dir: str | Path, vocab_size: int,
                         special_tokens: tuple[str, ...] = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
                         bos: str | None = "<|begin_of_text|>", eos: str = "<|end_of_text|>", pad: str | None = None,
                         chat_template: str | None = None, split: str = LLAMA3_SPLIT,
                         like: str | Path | None = None) -> Path:
    """Train a byte-level BPE set up like Llama-3's (its split regex, the 256-byte alphabet, no unknown token) and
    write ``tokenizer.json`` and ``tokenizer_config.json`` into ``out_dir``; returns ``out_dir``.

    The special tokens are appended after the learned tokens, as Llama-3 and Qwen have them; ``bos`` None and
    ``split`` QWEN2_SPLIT make a Qwen-like tokenizer. ``like``, a base tokenizer.json, gives its normalizer and
    pre-tokenizer instead (the extra tokenizer of a vocabulary merge must split text exactly as its base).
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE

    from tencentpretrain.checkpoint import atomic_dir

    tokenizer = Tokenizer(BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    if like is not None:
        base = Tokenizer.from_file(str(like))
        tokenizer.pre_tokenizer = base.pre_tokenizer
        if base.normalizer is not None:
            tokenizer.normalizer = base.normalizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.add_special_tokens(list(special_tokens))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
              "clean_up_tokenization_spaces": False, "model_max_length": 131072,
              **({"chat_template": chat_template} if chat_template else {})}
    with atomic_dir(out_dir) as tmp:
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    return Path(out_dir)


WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(corpus_path: str | Path, out_path: str | Path, vocab_size: int, lowercase: bool = True) -> Path:
    """Train a BERT WordPiece vocabulary on a corpus with ``tokenizers``' BertWordPieceTokenizer and write it as a
    ``vocab.txt`` (one token a line; ``[PAD] [UNK] [CLS] [SEP] [MASK]`` first, ids 0-4) at ``out_path``.

    BERT's normalisation: control characters dropped, Chinese characters split, and with ``lowercase`` the text
    lowercased and its accents stripped (an uncased vocabulary, which our tokenizer recognises as such). Returns
    ``out_path``; the file appears only once complete.
    """
    from tokenizers import BertWordPieceTokenizer

    from tencentpretrain.checkpoint import atomic_path

    tokenizer = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                       lowercase=lowercase)
    tokenizer.train([str(corpus_path)], vocab_size=vocab_size, min_frequency=1, show_progress=False,
                    special_tokens=list(WORDPIECE_SPECIALS), wordpieces_prefix="##")
    vocab = tokenizer.get_vocab()
    if len(vocab) <= len(WORDPIECE_SPECIALS):
        raise TokenizerError(f"{corpus_path}: WordPiece training found no words in it")
    tokens = sorted(vocab, key=vocab.__getitem__)
    if tuple(tokens[:len(WORDPIECE_SPECIALS)]) != WORDPIECE_SPECIALS:
        ids = [vocab[t] for t in WORDPIECE_SPECIALS]
        raise TokenizerError(f"WordPiece training put the special tokens at ids {ids}, not 0-4")
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return Path(out_path)
