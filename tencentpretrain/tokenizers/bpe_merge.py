"""Merging byte-level BPE tokenizers: a base ``tokenizer.json`` (Llama-3's, Qwen's) grown by the tokens of a BPE
trained on a new corpus, the vocabulary-extension step of the Chinese LLaMA work for today's tokenizers.

The base keeps everything: its token ids (the special tokens' too, entered in the BPE vocabulary as well, so that
the library keeps their ids once new tokens follow them), its merges in their order, its pre-tokenizer,
normalizer and decoder. The extra tokenizer's merges whose result the base lacks are appended after the base's, in
the extra's order, and each result token gets the next id after the base's last (its special tokens included), so
every new token is reachable by a merge of two tokens that exist before it. A base merge always has priority over
an appended one, so the appended tokens only join what the base leaves apart. The extra tokenizer must split text
as the base does (the same pre-tokenizer), or its tokens would never be formed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tencentpretrain.checkpoint import atomic_dir
from tencentpretrain.jsonfile import read_json_object
from tencentpretrain.tokenizers.huggingface import tokenizer_files
from tencentpretrain.tokenizers.sentencepiece import TokenizerError


@dataclass(frozen=True)
class BpeMergeReport:
    """Sizes of a merge: tokens of the base and the extra tokenizer, tokens added, tokens of the result."""

    base: int
    extra: int
    added: int
    merged: int


def _tokenizer_json(path: str | Path) -> tuple[Path, dict]:
    file, _ = tokenizer_files(path)
    if file.name != "tokenizer.json":
        raise TokenizerError(f"{file}: merging takes a tokenizer.json (convert GPT-2's vocab.json first)")
    data = read_json_object(file, TokenizerError, what="a tokenizer")
    if (data.get("model") or {}).get("type") != "BPE":
        raise TokenizerError(f"{file}: a {(data.get('model') or {}).get('type')} model, not BPE")
    return file, data


def _pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def size_of(data: dict) -> int:
    """One past the largest id of a tokenizer.json (its vocabulary and added tokens)."""
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def merge_bpe(base_path: str | Path, extra_path: str | Path, output_dir: str | Path) -> BpeMergeReport:
    """Write ``output_dir/tokenizer.json`` (the base grown by the extra's new tokens, module docstring) with the
    base's tokenizer_config.json and special_tokens_map.json beside it; the directory appears only once complete.

    Raises:
        TokenizerError: naming the file, for a tokenizer that is not BPE or an extra one that splits text otherwise.
    """
    base_file, base = _tokenizer_json(base_path)
    extra_file, extra = _tokenizer_json(extra_path)
    if base.get("pre_tokenizer") != extra.get("pre_tokenizer"):
        raise TokenizerError(f"{extra_file} splits text with another pre-tokenizer than {base_file}: its tokens would "
                             "not form under the base's split (train it with the base's, as --corpus_path does)")
    vocab = dict(base["model"]["vocab"])
    for token in base.get("added_tokens", []):  # ids past the model's: held in its vocabulary too, so that the
        vocab.setdefault(token["content"], token["id"])  # library keeps them where they are once tokens follow
    merges = [list(_pair(m)) for m in base["model"]["merges"]]
    base_size = next_id = size_of(base)
    added = 0
    for left, right in map(_pair, extra["model"]["merges"]):
        token = left + right
        if token in vocab or left not in vocab or right not in vocab:
            continue  # the base has it already, or it builds on a part that is not a token here
        vocab[token] = next_id
        next_id += 1
        merges.append([left, right])
        added += 1
    merged = dict(base)
    merged["model"] = {**base["model"], "vocab": vocab, "merges": merges}
    out = Path(output_dir)
    with atomic_dir(out) as tmp:
        (tmp / "tokenizer.json").write_text(json.dumps(merged, ensure_ascii=False) + "\n", encoding="utf-8")
        for name in ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            if (base_file.parent / name).is_file():
                (tmp / name).write_bytes((base_file.parent / name).read_bytes())
    return BpeMergeReport(base=base_size, extra=size_of(extra), added=added, merged=next_id)


def check_bpe_extends(base, merged) -> int:
    """Check that the tokenizer ``merged`` keeps every token of ``base`` at its id (two ``HuggingFaceTokenizer``);
    returns the base size.

    Raises:
        TokenizerError: naming the first id whose token differs, or the sizes when the merged one is smaller.
    """
    if merged.vocab_size < base.vocab_size:
        raise TokenizerError(f"{merged.model_path} has {merged.vocab_size} tokens, fewer than the {base.vocab_size} "
                             f"of the base tokenizer {base.model_path}: it does not extend it")
    for i in range(base.vocab_size):
        if base.id_to_piece(i) != merged.id_to_piece(i):
            raise TokenizerError(f"{merged.model_path} does not extend {base.model_path}: id {i} is "
                                 f"{merged.id_to_piece(i)!r} there and {base.id_to_piece(i)!r} in the base")
    return base.vocab_size


def base_parts(base, merged, ids: list[int]) -> list[list[int]]:
    """For each (new) token id of the ``merged`` tokenizer: the ids of ``base`` for its bytes, as the base tokenizes
    its text (the byte tokens themselves when the token is part of a multi-byte character)."""
    from tokenizers import decoders

    to_text = decoders.ByteLevel()
    out = []
    for token_id in ids:
        token = merged.id_to_piece(token_id)
        text = to_text.decode([token])
        if "\ufffd" in text:  # an incomplete character: its bytes one by one
            out.append([i for i in (base.tk.token_to_id(char) for char in token) if i is not None])
        else:
            out.append(base.encode(text))
    return out
