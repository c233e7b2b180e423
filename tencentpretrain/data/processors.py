"""Data processors (``--data_processor``): records of a corpus -> token ids of training samples.

A processor runs in the workers: :meth:`encode` turns one chunk of records into an :class:`Encoded` block of
numpy arrays. Everything a worker needs is in a small frozen :class:`ProcessorSpec`; each worker builds its
processor (and tokenizer) once from it, through :func:`build_processor`'s cache.

- ``lm``: each document becomes ``bos + tokens + eos``; documents are packed back to back into one stream
  that is cut into samples of ``seq_length + 1`` tokens (:meth:`LmProcessor.pack`).
- ``alpaca``: each instruction becomes one sample ``bos + prompt + response + eos`` whose loss covers only
  the response and its eos.
- ``bert`` (``data/bert.py``): sentence pairs with next-sentence labels, from documents of one sentence a line;
  the tokens are masked by the loader.
- ``mlm`` (``data/bert.py``): full sentences, ``[CLS] document [SEP]`` packed and cut every ``seq_length`` tokens;
  masked by the loader.
- ``t5`` (``data/t5.py``): documents packed and cut every ``seq_length - 1`` tokens; the loader corrupts spans
  into sentinels.
- ``bart`` (``data/bart.py``): sentences of documents, gathered into samples; the loader permutes the sentences
  and infills spans.
- ``chat`` (``data/chat.py``): each conversation becomes one sample rendered by a chat template, the loss on the
  assistant turns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from tencentpretrain.data.corpus import Record, RecordError, decode_text, parse_json
from tencentpretrain.data.corpus import field as record_field
from tencentpretrain.registry import DATA_PROCESSORS, TEMPLATES, TOKENIZERS

TAILS = ("drop", "pad")


@dataclass(frozen=True)
class ProcessorSpec:
    """What a worker needs to rebuild a processor: picklable, hashable, a few hundred bytes.

    Attributes:
        processor: the DATA_PROCESSORS name.
        tokenizer: the TOKENIZERS name.
        tokenizer_path: the tokenizer model file.
        special_tokens: overrides as ``(("bos", "<s>"), ...)`` pairs.
        seq_length: a sample has ``seq_length + 1`` tokens (inputs and shifted targets).
        corpus_format: ``text``, ``jsonl`` or ``json`` (resolved, not ``auto``).
        tail: lm only: what to do with the last partial sample (``drop`` or ``pad``).
        template: alpaca: the TEMPLATES name; chat: a name or a template file (``data/chat_template.py``).
        loss_on: chat only: ``all`` assistant turns or the ``last`` one.
        seed: bert: the random pairing (with each chunk's first line).
        whole_word_masking: bert, mlm: the loader masks whole words (recorded in meta.json for it).
        span: bert, mlm, t5, bart: ``(geometric p, longest span)``: the loader masks spans (recorded in meta.json).
        noise: t5: ``(noise density, mean noise span length)``; bart: ``(mask ratio, Poisson lambda)``.
        tgt_seq_length: t5, bart: the decoder's length (None: what the longest target needs).
    """

    processor: str
    tokenizer: str
    tokenizer_path: str
    special_tokens: tuple[tuple[str, int | str], ...]
    seq_length: int
    corpus_format: str
    tail: str = "drop"
    template: str = "alpaca"
    loss_on: str = "all"
    seed: int = 7
    whole_word_masking: bool = False
    span: tuple[float, int] | None = None
    noise: tuple[float, float] | None = None
    tgt_seq_length: int | None = None


@dataclass
class Encoded:
    """One chunk of records, encoded.

    Attributes:
        tokens: int32 ids, the chunk's documents (lm) or samples (alpaca) back to back.
        lengths: alpaca: tokens per sample; None for lm, whose stream is cut by :meth:`LmProcessor.pack`.
        loss_start: alpaca: per sample, the first target position whose loss counts (the position of the prompt's
            last token: prompt tokens kept, minus one without bos).
        documents: records turned into tokens.
        errors: ``(line_no, message)`` of invalid records, in file order.
        empty: blank documents, left out.
        truncated: samples cut to fit ``seq_length + 1``.
        loss_mask: chat: uint8 per token, 1 where the token is a target whose loss counts (else None).
        dropped_turns: chat: assistant turns left out to fit ``seq_length + 1``.
        too_long: chat: conversations left out whole (their first turn alone does not fit).
        seg_start: bert: per sample, the position where the second segment starts.
        labels: bert: per sample, the sentence-prediction label (1: the second segment is random).
        sentence_start: bart: uint8 per token, 1 at the first token of each sentence.
    """

    tokens: np.ndarray
    lengths: np.ndarray | None = None
    loss_start: np.ndarray | None = None
    documents: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    empty: int = 0
    truncated: int = 0
    loss_mask: np.ndarray | None = None
    dropped_turns: int = 0
    too_long: int = 0
    seg_start: np.ndarray | None = None
    labels: np.ndarray | None = None
    sentence_start: np.ndarray | None = None


@functools.cache
def build_processor(spec: ProcessorSpec):
    """The processor for ``spec``, built once per process (the tokenizer model is loaded once)."""
    tokenizer = TOKENIZERS.get(spec.tokenizer)(spec.tokenizer_path, dict(spec.special_tokens) or None)
    return DATA_PROCESSORS.get(spec.processor)(spec, tokenizer)


def encode_chunk(spec: ProcessorSpec, records: list[Record]) -> Encoded:
    """Worker entry point: encode one chunk of records."""
    return build_processor(spec).encode(records)


def flatten(docs: list[list[int]], bos: int | None = None, eos: int | None = None) -> np.ndarray:
    """Concatenate token lists into one int32 array, each optionally wrapped in bos/eos.

    One C-level pass over the ids (``np.fromiter``), then bos/eos scattered around them with numpy: the
    per-document Python work is a ``len``.
    """
    lengths = np.fromiter(map(len, docs), np.int64, len(docs))
    inner = np.fromiter(chain.from_iterable(docs), np.int32, int(lengths.sum()))
    extra = (bos is not None) + (eos is not None)
    if not extra or not len(docs):
        return inner
    ends = np.cumsum(lengths + extra)  # one past each wrapped document
    out = np.empty(int(ends[-1]), np.int32)
    body = np.ones(out.size, np.bool_)
    for position, token in ((ends - lengths - extra, bos), (ends - 1, eos)):
        if token is not None:
            out[position], body[position] = token, False
    out[body] = inner
    return out


@DATA_PROCESSORS.register("lm")
class LmProcessor:
    """Language-model pretraining: documents packed back to back, cut every ``seq_length + 1`` tokens.

    A document is one line of a text corpus (stripped; TencentPretrain's convention) or the ``text`` field of
    one JSONL record. Blank documents are left out and counted as ``empty``.
    """

    formats = ("text", "jsonl")
    packs_stream = True  # documents form one stream that pack() cuts into samples

    def __init__(self, spec: ProcessorSpec, tokenizer):
        self.spec, self.tokenizer = spec, tokenizer

    def document(self, payload) -> str:
        """The text of one record."""
        if self.spec.corpus_format == "text":
            return decode_text(payload).strip()
        return record_field(parse_json(payload), "text")

    def encode(self, records: list[Record]) -> Encoded:
        texts, errors, empty = [], [], 0
        for line_no, payload in records:
            try:
                text = self.document(payload)
            except RecordError as err:
                errors.append((line_no, str(err)))
                continue
            if text.strip():
                texts.append(text)
            else:
                empty += 1
        docs = self.tokenizer.encode_batch(texts) if texts else []
        tokens = flatten(docs, *self.wrap_ids())
        return Encoded(tokens=tokens, documents=len(texts), errors=errors, empty=empty)

    def wrap_ids(self) -> tuple[int | None, int | None]:
        """The ids put before and after each document: bos and eos."""
        return self.tokenizer.bos_id, self.tokenizer.eos_id

    def pack(self, total_tokens: int) -> np.ndarray:
        """Sample offsets (``samples + 1`` of them) cutting a stream of ``total_tokens`` tokens.

        Full samples have ``seq_length + 1`` tokens. The remaining tail is dropped (``--tail drop``) or kept as
        a last, shorter sample that the reader pads (``--tail pad``); a tail of a single token has no target
        and is always dropped.
        """
        stride = self.sample_length
        offsets = np.arange(total_tokens // stride + 1, dtype=np.uint64) * stride
        if self.spec.tail == "pad" and total_tokens - int(offsets[-1]) >= self.shortest_tail:
            offsets = np.append(offsets, np.uint64(total_tokens))
        return offsets

    @property
    def sample_length(self) -> int:
        """Tokens of a full sample: ``seq_length`` inputs and the next token of the last."""
        return self.spec.seq_length + 1

    shortest_tail = 2  # a last sample needs an input and its target


@DATA_PROCESSORS.register("alpaca")
class AlpacaProcessor:
    """Instruction tuning: one ``{"instruction", "input", "output"}`` record -> one sample.

    Sample: ``bos + prompt + response + eos`` (no bos for a tokenizer without one, such as Qwen's), where the
    prompt is ``TEMPLATES[template].render(instruction, input)`` and the response is ``output``. Literal
    two-character ``\\n`` escapes in the fields read as newlines. The loss covers the response and its eos only.

    Truncation, when the sample exceeds ``seq_length + 1`` tokens: of the ``seq_length - 1`` tokens between
    bos and eos (``seq_length`` without bos), the prompt keeps its last ``max(room - len(response), room // 2)``
    tokens at most (its end, which carries the template's response marker), the response keeps its first tokens
    in the remaining room, and eos always ends the sample. Such samples are counted as ``truncated``.
    """

    formats = ("json", "jsonl")
    packs_stream = False  # encode() gives whole samples

    def __init__(self, spec: ProcessorSpec, tokenizer):
        self.spec, self.tokenizer = spec, tokenizer
        self.template = TEMPLATES.get(spec.template)
        self.wrap = 1 + (tokenizer.bos_id is not None)  # eos, and bos unless the tokenizer has none (Qwen)

    def fields(self, payload) -> tuple[str, str]:
        """(prompt, response) of one record."""
        record = parse_json(payload)
        instruction, output = record_field(record, "instruction"), record_field(record, "output")
        input_text = record_field(record, "input", required=False)
        instruction, input_text, output = (s.replace("\\n", "\n") for s in (instruction, input_text, output))
        return self.template.render(instruction, input_text), output

    def encode(self, records: list[Record]) -> Encoded:
        prompts, responses, errors = [], [], []
        for line_no, payload in records:
            try:
                prompt, response = self.fields(payload)
            except RecordError as err:
                errors.append((line_no, str(err)))
                continue
            prompts.append(prompt)
            responses.append(response)
        if not prompts:
            return Encoded(tokens=np.zeros(0, np.int32), lengths=np.zeros(0, np.int64),
                           loss_start=np.zeros(0, np.int64), errors=errors)
        fitted = [self.fit(p, r) for p, r in zip(self.tokenizer.encode_batch(prompts),
                                                  self.tokenizer.encode_batch(responses))]
        samples = [[*p, *r] for p, r, _ in fitted]
        return Encoded(
            tokens=flatten(samples, self.tokenizer.bos_id, self.tokenizer.eos_id),
            lengths=np.fromiter((len(s) + self.wrap for s in samples), np.int64, len(samples)),
            loss_start=np.fromiter((max(len(p) + self.wrap - 2, 0) for p, _, _ in fitted), np.int64, len(samples)),
            documents=len(samples),
            errors=errors,
            truncated=sum(cut for _, _, cut in fitted),
        )

    def fit(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int], bool]:
        """Prompt and response cut to fit between bos and eos in ``seq_length + 1`` tokens."""
        room = self.spec.seq_length + 1 - self.wrap
        if len(prompt) + len(response) <= room:
            return prompt, response, False
        keep = min(len(prompt), max(room - len(response), room // 2))
        return prompt[len(prompt) - keep:], response[:room - keep], True
