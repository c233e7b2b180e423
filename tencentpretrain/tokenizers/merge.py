"""Merging SentencePiece models: the base model's pieces, then the extra model's pieces the base lacks.

This is the merge the Chinese LLaMA work published: the base's pieces keep their ids, order, scores and types
(specials and byte pieces included); the extra model's pieces that the base does not have are appended as normal
pieces in the extra model's order, once each. For LLaMA's tokenizer and the 20,000-piece Chinese model the result
has 49,953 pieces.

The appended pieces' scores (``scores``):

- ``"ranked"`` (default): each new piece scores below every base piece, in the extra model's order. SentencePiece's
  BPE merges the highest-scoring pair first, so the base's merges all happen as before and the new pieces only merge
  what is left: a text never gets more tokens than under the base model, and the order of merges is one strict
  ranking, which the Hugging Face (``tokenizers``) BPE reproduces exactly.
- ``"zero"``: score 0, as the published merge wrote them: the new pieces then merge before any base piece, and
  SentencePiece breaks the many ties by position, which a rank-based BPE (Hugging Face's) cannot reproduce; a
  Hugging Face tokenizer converted from such a model encodes some texts differently (docs/vocabulary.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tencentpretrain.checkpoint import atomic_path
from tencentpretrain.tokenizers.sentencepiece import TokenizerError

SCORE_POLICIES = ("ranked", "zero")


@dataclass(frozen=True)
class MergeReport:
    """Sizes of a merge: pieces of the base and the extra model, pieces added, pieces of the result."""

    base: int
    extra: int
    added: int
    merged: int


def read_model_proto(path: str | Path):
    """The ``ModelProto`` of a SentencePiece ``.model`` file.

    Raises:
        TokenizerError: naming the file, when it is missing, a directory or not a SentencePiece model.
    """
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    path = Path(path)
    if path.is_dir():
        raise TokenizerError(f"{path}: is a directory, expected a SentencePiece .model file")
    if not path.is_file():
        raise TokenizerError(f"{path}: SentencePiece model not found")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise TokenizerError(f"{path}: not a SentencePiece model ({err})") from None
    if not proto.pieces:
        raise TokenizerError(f"{path}: not a SentencePiece model (no pieces)")
    return proto


def new_piece_scores(base_scores: list[float], count: int, policy: str) -> list[float]:
    """Scores of ``count`` appended pieces under ``policy`` (see the module docstring).

    ``ranked`` steps down from the lowest base score by at least float32's spacing there, so that every score is
    distinct once stored as float32 (LLaMA's lowest scores are -1e9).
    """
    if policy == "zero":
        return [0.0] * count
    if policy != "ranked":
        raise ValueError(f"unknown score policy {policy!r}; known: {', '.join(SCORE_POLICIES)}")
    low = min(base_scores, default=0.0)
    step = max(1.0, float(np.spacing(np.float32(2 * abs(low) + 2 * count))))
    scores = [low - step * (i + 1) for i in range(count)]
    stored = np.asarray(scores, dtype=np.float32)
    assert len(set(stored.tolist())) == count and (stored < np.float32(low)).all(), "scores collide in float32"
    return scores


def merge_models(base_path: str | Path, extra_path: str | Path, output_path: str | Path,
                 scores: str = "ranked") -> MergeReport:
    """Append the pieces of ``extra_path`` that ``base_path`` lacks and write the result to ``output_path``.

    The base's normalizer, trainer settings (byte fallback, model type) and special pieces are kept. The file is
    written atomically.

    Args:
        base_path: the base SentencePiece model (LLaMA's).
        extra_path: the model whose new pieces are appended (e.g. a Chinese model).
        output_path: the merged ``.model`` file.
        scores: ``"ranked"`` or ``"zero"``, the appended pieces' scores (see the module docstring).

    Returns:
        The sizes of the merge.
    """
    base, extra = read_model_proto(base_path), read_model_proto(extra_path)
    have = {p.piece for p in base.pieces}
    added = []
    for piece in extra.pieces:
        if piece.piece not in have:
            have.add(piece.piece)
            added.append(piece.piece)
    normal = [p.score for p in base.pieces if p.type == p.NORMAL]
    base_size = len(base.pieces)
    for text, score in zip(added, new_piece_scores(normal, len(added), scores)):
        new = base.pieces.add()
        new.piece, new.score, new.type = text, score, new.NORMAL
    with atomic_path(output_path) as tmp:
        tmp.write_bytes(base.SerializeToString())
    return MergeReport(base=base_size, extra=len(extra.pieces), added=len(added), merged=len(base.pieces))


def check_extends(base_path: str | Path, merged_path: str | Path) -> int:
    """Check that ``merged_path`` begins with exactly the pieces of ``base_path``; returns the base size.

    Raises:
        TokenizerError: naming the first id whose piece differs, or the sizes when the merged model is smaller.
    """
    base, merged = read_model_proto(base_path), read_model_proto(merged_path)
    if len(merged.pieces) < len(base.pieces):
        raise TokenizerError(f"{merged_path} has {len(merged.pieces)} pieces, fewer than the {len(base.pieces)} of "
                         f"the base tokenizer {base_path}: it does not extend it")
    for i, (a, b) in enumerate(zip(base.pieces, merged.pieces)):
        if a.piece != b.piece:
            raise TokenizerError(f"{merged_path} does not extend {base_path}: id {i} is {b.piece!r} there and "
                             f"{a.piece!r} in the base")
    return len(base.pieces)
