"""What llama.cpp needs besides the weights: the vocabulary (SentencePiece's, or a byte-level BPE's) and the chat
template.

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
from tencentpretrain.tokenizers.train import LLAMA3_SPLIT, QWEN2_SPLIT

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
    model: str = "llama"  # tokenizer.ggml.model: llama (SentencePiece) or gpt2 (byte-level BPE)
    pre: str = "default"  # tokenizer.ggml.pre: the pre-tokenizer llama.cpp splits text with
    merges: list[str] = field(default_factory=list)  # gpt2: "left right" pairs, highest priority first
    add_bos: bool = True


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


# The pre-tokenizer split regexes llama.cpp knows by name (tokenizer.ggml.pre), as the tokenizer.json files write them.
PRE_TOKENIZERS = {"llama-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}


def read_bpe_vocabulary(tokenizer_path: str | Path, rows: int) -> Vocabulary:
    """The vocabulary of a Hugging Face byte-level BPE (``tokenizer.json``) for a model with ``rows`` embedding rows,
    as llama.cpp's ``gpt2`` tokenizer takes it: tokens in id order (byte-level strings), special added tokens as
    CONTROL, other added tokens as USER_DEFINED, the merges, and the pre-tokenizer named by its split regex
    (``llama-bpe`` for Llama-3's, ``qwen2`` for Qwen's).

    Raises:
        ConversionError: not a byte-level BPE, a pre-tokenizer llama.cpp does not know, or more tokens than rows.
    """
    from tencentpretrain.jsonfile import read_json_object
    from tencentpretrain.tokenizers import HuggingFaceTokenizer

    tokenizer = HuggingFaceTokenizer(tokenizer_path)
    where = f"--tokenizer_path {tokenizer_path}"
    if tokenizer.vocab_size > rows:
        raise ConversionError(f"{where}: {tokenizer.vocab_size} tokens but the model's word embedding has only "
                              f"{rows} rows; is it the model's tokenizer?")
    if tokenizer.file.name == "vocab.json":
        merges_text = (tokenizer.file.parent / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [m for m in merges_text if m and not m.startswith("#version")]
        pre = "gpt2"
    else:
        data = read_json_object(tokenizer.file, ConversionError, what="a tokenizer")
        model = data.get("model") or {}
        if model.get("type") != "BPE":
            raise ConversionError(f"{where}: a {model.get('type')} model; llama.cpp's gpt2 vocabulary takes "
                                  "byte-level BPE")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        pre = _pre_tokenizer_name(data.get("pre_tokenizer"), where)
    added = {i: token.special for i, token in tokenizer.tk.get_added_tokens_decoder().items()}
    tokens, types = [], []
    for i in range(tokenizer.vocab_size):
        token = tokenizer.id_to_piece(i)
        if token is None:  # a hole in the ids
            token, kind = f"[PAD{i}]", UNUSED
        else:
            kind = NORMAL if i not in added else CONTROL if added[i] else USER_DEFINED
        tokens.append(token)
        types.append(kind)
    tokens += [f"[PAD{i}]" for i in range(tokenizer.vocab_size, rows)]
    types += [UNUSED] * (rows - tokenizer.vocab_size)
    special = {name: i for name, i in tokenizer.special_tokens.items() if i is not None}
    if tokenizer.bos_id is None:  # llama.cpp needs an id; it is never added (add_bos false)
        special["bos"] = tokenizer.eos_id
    return Vocabulary(tokens, [0.0] * rows, types, special, False, model="gpt2", pre=pre, merges=merges,
                      add_bos=tokenizer.bos_id is not None)


def _pre_tokenizer_name(pre_tokenizer, where: str) -> str:
    """The llama.cpp name of a tokenizer.json's pre-tokenizer: its Split regex looked up in PRE_TOKENIZERS."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    for step in steps:
        regex = (step.get("pattern") or {}).get("Regex") if step.get("type") == "Split" else None
        if regex is not None:
            for name, known in PRE_TOKENIZERS.items():
                if regex == known:
                    return name
            raise ConversionError(f"{where}: its pre-tokenizer splits with {regex!r}, which llama.cpp knows by no "
                                  f"name we write (known: {', '.join(PRE_TOKENIZERS)})")
        if step.get("type") == "ByteLevel" and step.get("use_regex", True) and len(steps) == 1:
            return "gpt2"
    raise ConversionError(f"{where}: no byte-level pre-tokenizer llama.cpp knows")


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
