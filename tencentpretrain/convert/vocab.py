"""Growing a checkpoint's vocabulary to a merged tokenizer (``scripts/extend_vocab.py``).

The word embedding and the vocabulary head (lm's output layer or mlm's ``linear_2``; the tied matrix once, when the
config ties them) get one row per piece the merged tokenizer appended to the base tokenizer, and the head's bias
(mlm's, or lm's with ``has_lmtarget_bias``) an entry of 0 per new piece. Every old row is kept bit for bit; each
new row is initialised by ``init``:

- ``subword_mean``: the mean of the base rows of the pieces the new piece's text tokenizes into under the base
  tokenizer (for a new Chinese word, its characters or their UTF-8 bytes), so the new token starts where the model
  already reads the same text;
- ``mean``: the mean of all base rows;
- ``normal``: drawn from N(0, ``std``).

A checkpoint whose config allows a padded vocabulary (Qwen's rows past its tokenizer) gives its padding rows to the
new tokens first; padding rows they do not need stay as they were.

Other tensors are passed through untouched (memory-mapped from a ``.bin``), so only the two grown matrices are held
in memory beside the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tencentpretrain.checkpoint import WORD_EMBEDDING
from tencentpretrain.config import ModelConfig
from tencentpretrain.model import VOCAB_HEADS
from tencentpretrain.tokenizers.merge import check_extends, read_model_proto
from tencentpretrain.vocab import VocabError, vocab_rows

INITS = ("subword_mean", "mean", "normal")


def subword_ids(base_spm_path: str | Path, pieces: Sequence[str]) -> list[list[int]]:
    """The base-tokenizer ids of each piece's text (``▁`` is the space it stands for; no dummy prefix is added)."""
    import sentencepiece

    proto = read_model_proto(base_spm_path)
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return processor.encode(list(pieces))


def init_rows(base: torch.Tensor, count: int, init: str, parts: Sequence[Sequence[int]] | None = None,
              std: float = 0.02, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` new rows for the matrix ``base`` (rows, hidden), in its dtype.

    Args:
        base: the base rows.
        count: rows to make.
        init: one of ``INITS``.
        parts: for ``subword_mean``, the base ids whose rows each new row averages (an empty list: the mean row).
        std: for ``normal``, the standard deviation.
        generator: for ``normal``, the random generator.
    """
    if init == "normal":
        return (torch.randn(count, base.shape[1], generator=generator) * std).to(base.dtype)
    mean = base.float().mean(dim=0)  # (hidden,)
    if init == "mean":
        return mean.expand(count, -1).to(base.dtype)
    if init != "subword_mean":
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    if parts is None or len(parts) != count:
        raise ValueError(f"subword_mean needs the base ids of each of the {count} new pieces")
    rows = torch.empty(count, base.shape[1], dtype=torch.float32)
    for i, ids in enumerate(parts):
        rows[i] = base[list(ids)].float().mean(dim=0) if ids else mean
    return rows.to(base.dtype)


def grow(base: torch.Tensor, new_rows: torch.Tensor) -> torch.Tensor:
    """``base`` with ``new_rows`` appended below it, in one new tensor (the old rows copied exactly)."""
    return torch.cat([base, new_rows.to(base.dtype)])


def extend_state(state: dict[str, torch.Tensor], config: ModelConfig, base_spm_path: str | Path,
                 spm_path: str | Path, init: str = "subword_mean", std: float = 0.02, seed: int = 7,
                 source: str = "checkpoint", bpe: bool = False) -> dict[str, torch.Tensor]:
    """A state dict whose embedding and head have a row per piece of the merged tokenizer ``spm_path``.

    Args:
        state: the checkpoint's tensors, sized for the base tokenizer.
        config: its config (``tie_weights`` decides whether the head is its own matrix).
        base_spm_path: the tokenizer the checkpoint was trained with.
        spm_path: the merged tokenizer, which must begin with the base's pieces.
        init: how new rows start, one of ``INITS``.
        std: standard deviation of ``normal``.
        seed: seed of ``normal``.
        source: the checkpoint's file, for messages.
        bpe: the two tokenizers are Hugging Face byte-level BPEs (tokenizer.json files or directories), merged by
            ``tokenizers/bpe_merge.py``; a new token's subwords are the base's tokens of its bytes.

    Returns:
        A new dict; tensors other than the embedding and head are the same objects. A tied head is left out (it
        is the embedding), so it is written once.

    Raises:
        VocabError: the base tokenizer's size is not the checkpoint's rows, or the merged tokenizer does not extend it.
    """
    base_size, count, parts = _new_tokens(base_spm_path, spm_path, bpe, init == "subword_mean")
    rows = vocab_rows(state)
    if WORD_EMBEDDING not in rows:
        raise VocabError(f"{source} has no {WORD_EMBEDDING}; is it a TencentPretrain checkpoint?")
    padded = config.allow_padded_vocab  # rows past the tokenizer (Qwen's): the new tokens take them first
    wrong = {name: n for name, n in rows.items() if n != base_size and not (padded and n > base_size)}
    if wrong:
        sizes = ", ".join(f"{name} has {n} rows" for name, n in wrong.items())
        raise VocabError(f"base tokenizer {base_spm_path} has {base_size} pieces but checkpoint {source}: {sizes}; "
                         "pass the tokenizer the checkpoint was trained with as --base_spm_model_path")
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    heads = [name for name in VOCAB_HEADS.values() if name in state]  # lm's output layer, mlm's linear_2
    names = [WORD_EMBEDDING] if config.tie_weights else [WORD_EMBEDDING, *heads]
    for name in names:
        base_rows = state[name][:base_size]
        out[name] = _keep_padding(grow(base_rows, init_rows(base_rows, count, init, parts, std, generator)),
                                  state[name])
    for bias in (head.removesuffix(".weight") + ".bias" for head in heads):
        if bias in state:  # a new token's bias starts at 0 (transformers' resize_token_embeddings does the same)
            base_rows = state[bias][:base_size]
            out[bias] = _keep_padding(torch.cat([base_rows, base_rows.new_zeros(count)]), state[bias])
    if config.tie_weights:
        for head in heads:
            out.pop(head, None)
    return out


def _new_tokens(base_spm_path: str | Path, spm_path: str | Path, bpe: bool,
                with_parts: bool) -> tuple[int, int, list[list[int]] | None]:
    """(base size, number of new tokens, each new token's subwords in the base tokenizer when ``with_parts``) of
    a merged tokenizer that extends the base one (checked)."""
    if bpe:
        from tencentpretrain.tokenizers.bpe_merge import base_parts, check_bpe_extends
        from tencentpretrain.tokenizers.huggingface import HuggingFaceTokenizer

        base_bpe, merged_bpe = HuggingFaceTokenizer(base_spm_path), HuggingFaceTokenizer(spm_path)
        base_size = check_bpe_extends(base_bpe, merged_bpe)
        new_ids = list(range(base_size, merged_bpe.vocab_size))
        return base_size, len(new_ids), base_parts(base_bpe, merged_bpe, new_ids) if with_parts else None
    base_size = check_extends(base_spm_path, spm_path)
    new_pieces = [p.piece for p in read_model_proto(spm_path).pieces[base_size:]]
    return base_size, len(new_pieces), subword_ids(base_spm_path, new_pieces) if with_parts else None


def _keep_padding(grown: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``grown`` followed by the padding rows of ``old`` that the new tokens did not need."""
    return grow(grown, old[grown.shape[0]:]) if grown.shape[0] < old.shape[0] else grown
