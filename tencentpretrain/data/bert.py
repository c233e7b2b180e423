"""BERT's data: sentence pairs for next-sentence prediction (preprocessing) and masked tokens (in the loader).

Preprocessing (``--data_processor bert``, corpus format ``documents``: one sentence a line, a blank line between
documents) follows TencentPretrain's ``BertDataset``: sentences of a document are gathered until they reach the target
length (``seq_length - 3``, or with probability 0.1 a shorter random one), split at a random sentence into A and B;
half of the time B is replaced by sentences from a random other document of the same chunk (label 1; 0 when B follows
A, Hugging Face's convention) and the unused sentences go back to the document. The pair is trimmed one token at a time
from the longer side, at its front or back at random, to ``[CLS] A [SEP] B [SEP]`` within ``seq_length``. The dataset
stores the tokens, where segment B starts and the label; the random choices come from a generator seeded by
(``--seed``, the chunk's first line), so the dataset does not depend on ``--processes_num``.

Masking is done by the loader (:func:`mask_tokens`), with a generator seeded by (seed, epoch, sample): every epoch
masks a sample afresh (RoBERTa's dynamic masking) and a resumed run masks exactly as the uninterrupted one would.
15% of the tokens that are not special (``[CLS]``, ``[SEP]``, padding) are chosen (at least one); of those 80% become
``[MASK]``, 10% a random token and 10% stay as they are; the loss is on the chosen ones.

``--data_processor mlm`` (:class:`MlmProcessor`) is the masked-LM data without pairs: full sentences packed, one
segment, masked by the loader in the same way.
"""

from __future__ import annotations

import numpy as np

from tencentpretrain.data.corpus import Record, RecordError, decode_text
from tencentpretrain.data.processors import Encoded, LmProcessor, ProcessorSpec
from tencentpretrain.registry import DATA_PROCESSORS
from tencentpretrain.targets import IGNORE_INDEX

SHORT_SEQ_PROB = 0.1  # TencentPretrain's short_seq_prob
MASK_PROB = 0.15


@DATA_PROCESSORS.register("bert")
class BertProcessor:
    """Sentence pairs with next-sentence labels from documents of one sentence a line (module docstring)."""

    formats = ("documents",)
    packs_stream = False  # encode() gives whole samples

    def __init__(self, spec: ProcessorSpec, tokenizer):
        check_masking_tokenizer(spec, tokenizer, " (a BERT tokenizer.json, or the special tokens named with "
                                                 "--special_tokens_path)")
        if spec.seq_length < 5:
            raise RecordError(f"--seq_length {spec.seq_length} leaves no room for two sentences and three specials")
        self.spec, self.tokenizer = spec, tokenizer

    def sentences(self, payload: list[bytes]) -> list[str]:
        return [decode_text(line).strip() for line in payload]

    def encode(self, records: list[Record]) -> Encoded:
        documents, errors = [], []
        for line_no, payload in records:
            try:
                lines = self.sentences(payload)
            except RecordError as err:
                errors.append((line_no, str(err)))
                continue
            ids = self.tokenizer.encode_batch(lines)
            documents.append([sentence for sentence in ids if sentence])
        rng = np.random.default_rng([self.spec.seed, records[0][0] if records else 0])
        samples, seg_starts, labels, truncated = [], [], [], 0
        for d in range(len(documents)):
            for a, b, label, cut in self.pairs(documents, d, rng):
                samples.append([self.tokenizer.cls_id, *a, self.tokenizer.sep_id, *b, self.tokenizer.sep_id])
                seg_starts.append(len(a) + 2)
                labels.append(label)
                truncated += cut
        lengths = np.fromiter(map(len, samples), np.int64, len(samples))
        tokens = np.fromiter((t for sample in samples for t in sample), np.int32, int(lengths.sum()))
        return Encoded(tokens=tokens, lengths=lengths, documents=len(documents), errors=errors, truncated=truncated,
                       seg_start=np.asarray(seg_starts, np.uint32), labels=np.asarray(labels, np.uint8))

    def pairs(self, documents: list[list[list[int]]], d: int, rng: np.random.Generator):
        """``(A, B, label, truncated)`` of document ``d`` (TencentPretrain's create_ins_from_doc)."""
        document, room = documents[d], self.spec.seq_length - 3
        target = room if rng.random() >= SHORT_SEQ_PROB else int(rng.integers(2, room + 1))
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
                a = [t for sentence in chunk[:a_end] for t in sentence]
                if len(chunk) == 1 or rng.random() < 0.5:
                    label, b = 1, self.random_sentences(documents, d, target - len(a), rng)
                    i -= len(chunk) - a_end  # the sentences not used go back to the document
                else:
                    label, b = 0, [t for sentence in chunk[a_end:] for t in sentence]
                cut = trim_pair(a, b, room, rng)
                if a and b:
                    yield a, b, label, cut
                chunk, length = [], 0
            i += 1

    @staticmethod
    def random_sentences(documents: list[list[list[int]]], d: int, length: int, rng: np.random.Generator):
        """Sentences from a random start in another document (the same one when the chunk has one) up to
        ``length`` tokens."""
        other = d
        for _ in range(10):
            other = int(rng.integers(0, len(documents)))
            if other != d:
                break
        sentences = documents[other]
        if not sentences:
            return []
        out = []
        for sentence in sentences[int(rng.integers(0, len(sentences))):]:
            out.extend(sentence)
            if len(out) >= length:
                break
        return out


def trim_pair(a: list[int], b: list[int], room: int, rng: np.random.Generator) -> bool:
    """Trim the longer of ``a`` and ``b`` one token at a time, at its front or back at random, until both fit in
    ``room``; whether anything was cut."""
    cut = False
    while len(a) + len(b) > room:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
        cut = True
    return cut


def missing_mask_tokens(tokenizer) -> list[str]:
    """Which of ``cls``, ``sep``, ``mask`` the tokenizer lacks (masked-LM data and fill-mask need all three)."""
    return [name for name in ("cls", "sep", "mask") if getattr(tokenizer, f"{name}_id", None) is None]


def check_masking_tokenizer(spec: ProcessorSpec, tokenizer, hint: str = "") -> None:
    """RecordError, before any work, for a tokenizer the ``spec.processor``'s masking cannot use: without
    ``[CLS]``, ``[SEP]`` or ``[MASK]``, or (``--whole_word_masking``) with a vocabulary that marks no words."""
    missing = missing_mask_tokens(tokenizer)
    if missing:
        raise RecordError(f"the {spec.processor} processor needs a tokenizer with [CLS], [SEP] and [MASK] tokens; "
                          f"this one has no {', '.join(missing)}{hint}")
    if spec.whole_word_masking:
        continuation_ids(tokenizer)


def continuation_ids(tokenizer) -> list[int]:
    """The ids of the pieces that continue a word (whole-word masking): WordPiece's ``##`` pieces, or for a
    SentencePiece-style vocabulary (pieces starting a word carry ``▁``) the pieces without it, specials and byte
    pieces aside. RecordError for a vocabulary with neither marker."""
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    if any(piece.startswith("##") for piece in pieces):
        return [i for i, piece in enumerate(pieces) if piece.startswith("##")]
    if any(piece.startswith("\u2581") for piece in pieces):
        specials = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, *tokenizer.special_tokens.values()}
        return [i for i, piece in enumerate(pieces) if not piece.startswith("\u2581") and i not in specials
                and not (piece.startswith("<") and piece.endswith(">"))]
    raise RecordError("--whole_word_masking needs a vocabulary that marks words: WordPiece's ## continuation pieces "
                      "or SentencePiece's \u2581 word starts; this one has neither")


def mask_tokens(tokens: np.ndarray, length: int, rng: np.random.Generator, mask_id: int, vocab_size: int,
                specials: tuple[int, ...], continuation: np.ndarray | None = None,
                span: tuple[float, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of one sample: ``(input ids, mlm targets)``; targets are IGNORE_INDEX where nothing is
    predicted. Only the first ``length`` tokens are real; special tokens are never chosen.

    With ``continuation`` (a bool per vocabulary id: the piece continues a word) whole words are chosen, as
    Google's BERT does with ``do_whole_word_mask``: the words in random order, each taken whole while the chosen
    tokens stay within the 15% budget (at least one word); the 80/10/10 choice is then made per token.

    With ``span`` ``(p, max_length)`` spans are chosen, as TencentPretrain's ``--span_masking`` (SpanBERT): from
    the first real token on, a span of a length drawn from a geometric distribution of parameter ``p`` cut at
    ``max_length`` (and at the next special token), then the next span after it; the spans in random order, each
    taken while the chosen tokens fit the budget (the first one cut to it); the 80/10/10 choice is made per span."""
    src, tgt = tokens.copy(), np.full(tokens.shape, IGNORE_INDEX, np.int64)
    candidates = np.flatnonzero(~np.isin(tokens[:length], specials))
    if not len(candidates):
        return src, tgt
    count = max(1, int(round(len(candidates) * MASK_PROB)))
    if continuation is None and span is None:
        chosen = rng.choice(candidates, size=count, replace=False)
    elif span is None:
        chosen = np.concatenate(take_groups(words_of(tokens, candidates, continuation), count, rng, cut_first=False))
        count = len(chosen)
    else:
        groups = take_groups(spans_of(candidates, rng, *span), count, rng, cut_first=True)
        chosen = np.concatenate(groups)
        tgt[chosen] = tokens[chosen]
        for group, kind in zip(groups, rng.random(len(groups))):
            if kind < 0.8:
                src[group] = mask_id
            elif kind < 0.9:
                src[group] = rng.integers(0, vocab_size, len(group))
        return src, tgt
    tgt[chosen] = tokens[chosen]
    kind = rng.random(count)
    src[chosen[kind < 0.8]] = mask_id
    random = chosen[(kind >= 0.8) & (kind < 0.9)]
    src[random] = rng.integers(0, vocab_size, len(random))
    return src, tgt


def words_of(tokens: np.ndarray, candidates: np.ndarray, continuation: np.ndarray) -> list[np.ndarray]:
    """The candidate positions grouped into words: a continuation piece right after a candidate joins its word."""
    starts = [k for k in range(1, len(candidates))
              if not (continuation[tokens[candidates[k]]] and candidates[k] == candidates[k - 1] + 1)]
    return np.split(candidates, starts)


def spans_of(candidates: np.ndarray, rng: np.random.Generator, p: float, max_length: int) -> list[np.ndarray]:
    """The candidate positions cut into consecutive spans of geometric lengths (``p``, at most ``max_length``); a
    span ends early where the candidates stop being contiguous (a special token)."""
    lengths = np.arange(1, max_length + 1)
    weights = p * (1 - p) ** (lengths - 1)
    weights /= weights.sum()
    spans, k = [], 0
    while k < len(candidates):
        end = k + 1
        limit = k + int(rng.choice(lengths, p=weights))
        while end < min(limit, len(candidates)) and candidates[end] == candidates[end - 1] + 1:
            end += 1
        spans.append(candidates[k:end])
        k = end
    return spans


def take_groups(groups: list[np.ndarray], budget: int, rng: np.random.Generator,
                cut_first: bool) -> list[np.ndarray]:
    """Groups of positions drawn in random order, each taken whole while the total fits ``budget``; the first
    drawn is always taken (cut to the budget with ``cut_first``)."""
    chosen: list[np.ndarray] = []
    taken = 0
    for g in rng.permutation(len(groups)):
        group = groups[g]
        if not chosen and cut_first:
            group = group[:budget]
        elif chosen and taken + len(group) > budget:
            continue
        chosen.append(group)
        taken += len(group)
        if taken >= budget:
            break
    return chosen


@DATA_PROCESSORS.register("mlm")
class MlmProcessor(LmProcessor):
    """Masked-LM pretraining on full sentences (TencentPretrain's ``mlm`` with ``--full_sentences``; RoBERTa's
    data): each document (a line, or a JSONL record's ``text``) becomes ``[CLS] tokens [SEP]``, the documents are
    packed back to back and cut every ``seq_length`` tokens (no pairs, no sentence labels; one segment). The tokens
    are masked by the loader, as for ``bert``. ``--tail pad`` keeps the last, shorter sample (TencentPretrain keeps
    it), ``drop`` (the default) leaves it out."""

    def __init__(self, spec: ProcessorSpec, tokenizer):
        check_masking_tokenizer(spec, tokenizer)
        if spec.seq_length < 3:
            raise RecordError(f"--seq_length {spec.seq_length} leaves no room for a token between [CLS] and [SEP]")
        super().__init__(spec, tokenizer)

    def wrap_ids(self) -> tuple[int, int]:
        return self.tokenizer.cls_id, self.tokenizer.sep_id

    @property
    def sample_length(self) -> int:
        """Tokens of a sample: ``seq_length``, all of them input (the targets are the masked ones)."""
        return self.spec.seq_length

    shortest_tail = 1
