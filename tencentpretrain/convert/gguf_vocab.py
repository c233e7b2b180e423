"""What llama.cpp needs besides the weights: the SentencePiece vocabulary and the chat template.

The vocabulary goes in as llama.cpp's ``llama`` tokenizer (SentencePiece BPE run over the piece scores): each piece
with its score and type, the special-token ids and whether a space is put before the text. The chat template is a
Jinja string that llama.cpp (``llama-server --jinja``, ``llama-cli --jinja``) and llama-cpp-python render; it writes
a conversation as our ``generation/chat.py`` does, turn by turn ``bos + prompt + answer + eos``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tencentpretrain.convert.keymap import ConversionError
from tencentpretrain.tokenizers.merge import read_model_proto

# SentencePiece's ModelProto.SentencePiece.Type numbers, which llama.cpp's token types (gguf.TokenType) share.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE = 2  # TrainerSpec.model_type
SPACE = "\u2581"  # SentencePiece's visible space


@dataclass
class Vocabulary:
    """A SentencePiece model as GGUF metadata.

    Attributes:
        tokens: piece texts, one per embedding row (rows past the tokenizer padded with ``[PAD<i>]``).
        scores: piece scores (llama.cpp merges the highest-scored pair first).
        types: piece types (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE).
        special: ids of bos, eos, unk and (when the model has one) pad.
        add_space_prefix: SentencePiece's ``add_dummy_prefix``: a space is put before the text.
        warnings: what llama.cpp will tokenise differently from SentencePiece with this model.
    """

    tokens: list[str]
    scores: list[float]
    types: list[int]
    special: dict[str, int]
    add_space_prefix: bool
    warnings: list[str] = field(default_factory=list)


def read_vocabulary(spm_model_path: str | Path, rows: int) -> Vocabulary:
    """The vocabulary of a SentencePiece model for a model with ``rows`` embedding rows.

    Raises:
        TokenizerError: the file is not a SentencePiece model.
        ConversionError: it has more pieces than the model has rows.
    """
    proto = read_model_proto(spm_model_path)
    pieces = proto.pieces
    if len(pieces) > rows:
        raise ConversionError(f"--spm_model_path {spm_model_path}: {len(pieces)} pieces but the model's word "
                              f"embedding has only {rows} rows; is it the model's tokenizer?")
    tokens = [_token_text(p.piece, p.type) for p in pieces]
    tokens += [f"[PAD{i}]" for i in range(len(pieces), rows)]  # as llama.cpp's own converter pads
    scores = [float(p.score) for p in pieces] + [-1000.0] * (rows - len(pieces))
    types = [int(p.type) for p in pieces] + [UNUSED] * (rows - len(pieces))
    spec = proto.trainer_spec
    special = {name: getattr(spec, f"{name}_id") for name in ("bos", "eos", "unk", "pad")}
    special = {name: i for name, i in special.items() if 0 <= i < len(pieces)}
    missing = [name for name in ("bos", "eos", "unk") if name not in special]
    if missing:
        raise ConversionError(f"--spm_model_path {spm_model_path}: defines no {' / '.join(missing)} piece")
    return Vocabulary(tokens, scores, types, special, proto.normalizer_spec.add_dummy_prefix,
                      _tokenizer_warnings(proto, spm_model_path))


def _token_text(piece: str, kind: int) -> str:
    """llama.cpp matches user-defined pieces against raw text, where a space is a space (its converter does this)."""
    return piece.replace(SPACE, " ") if kind == USER_DEFINED else piece


def _tokenizer_warnings(proto, path) -> list[str]:
    """Settings under which llama.cpp's tokeniser (BPE merges, no normaliser) differs from SentencePiece's."""
    out = []
    if proto.trainer_spec.model_type != BPE:
        out.append(f"{path} is not a BPE model: llama.cpp merges pieces by score as BPE does, so it can split text "
                   "differently from SentencePiece's unigram search")
    if proto.normalizer_spec.name not in ("identity", "") or proto.normalizer_spec.remove_extra_whitespaces:
        out.append(f"{path} normalises text ({proto.normalizer_spec.name}, remove_extra_whitespaces="
                   f"{proto.normalizer_spec.remove_extra_whitespaces}); llama.cpp does not, so text that the "
                   "normaliser changes is tokenised differently")
    if not proto.trainer_spec.byte_fallback:
        out.append(f"{path} has no byte fallback: llama.cpp cannot tokenise characters outside its pieces")
    return out


def sentencepiece_from_gguf(reader, out_path: str | Path) -> int:
    """Write the SentencePiece model of a GGUF file's ``llama`` vocabulary (a BPE model, identity normalisation,
    byte fallback when it has byte pieces, as llama.cpp tokenises); return the number of pieces.

    Unused ``[PAD<i>]`` rows past the tokenizer are left out. Raises ConversionError for another tokenizer model.
    """
    from sentencepiece import sentencepiece_model_pb2

    def value(key, default=None):
        field = reader.get_field(key)
        return default if field is None else field.contents()

    if value("tokenizer.ggml.model") != "llama":
        raise ConversionError(f"the GGUF vocabulary is {value('tokenizer.ggml.model')!r}, not SentencePiece's llama")
    tokens, scores = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores")
    types = value("tokenizer.ggml.token_type")
    while tokens and types[-1] == UNUSED and tokens[-1].startswith("[PAD"):
        tokens, scores, types = tokens[:-1], scores[:-1], types[:-1]
    proto = sentencepiece_model_pb2.ModelProto()
    for token, score, kind in zip(tokens, scores, types):
        proto.pieces.add(piece=token.replace(" ", SPACE) if kind == USER_DEFINED else token, score=score, type=kind)
    spec = proto.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = BPE, len(tokens), BYTE in types
    spec.unk_id, spec.bos_id = value("tokenizer.ggml.unknown_token_id", 0), value("tokenizer.ggml.bos_token_id", 1)
    spec.eos_id, spec.pad_id = value("tokenizer.ggml.eos_token_id", 2), value("tokenizer.ggml.padding_token_id", -1)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(value("tokenizer.ggml.add_space_prefix", True))
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    Path(out_path).write_bytes(proto.SerializeToString())
    return len(tokens)
