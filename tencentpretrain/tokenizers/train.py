"""Training a LLaMA-style SentencePiece model on a corpus (for new languages, tests and the quickstart)."""

from __future__ import annotations

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
