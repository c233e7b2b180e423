"""BART's data: sentence permutation and text infilling (``--data_processor bart``).

Preprocessing (corpus format ``documents``: one sentence a line, a blank line between documents, as ``bert`` reads
them) follows TencentPretrain's ``BartDataset``: a document's sentences are gathered in order while they fit in
``seq_length - 2`` tokens, and each such run becomes one sample ``bos + sentences + eos``. A sentence longer than
that is cut into pieces that fit, each then taken as a sentence (counted in ``counts.truncated``; TencentPretrain
leaves such sentences out). The dataset stores the text and where each sentence starts (``sentence_start.bin``).

The loader corrupts each sample with a generator seeded by (seed, epoch, sample) (``data/seq2seq.py``):

- sentence permutation: the sample's sentences in a random order, bos and eos in place (BART's
  ``permute_sentences`` 1.0, TencentPretrain's shuffle);
- text infilling: ``round(mask_ratio * n)`` of the ``n`` tokens that are not special (bos, eos, pad, mask) are
  masked, in spans whose lengths are drawn from a Poisson distribution of mean ``poisson_lambda`` (zero lengths
  dropped, the last span cut to the count), placed at random without overlapping; each run of masked tokens becomes
  one mask token (BART's ``replace_length`` 1; Hugging Face's ``run_bart_dlm_flax.py`` defaults, 0.3 and 3.0).
  With ``--span_masking`` the noise is TencentPretrain's instead (``data/bert.py``: ``mask_tokens``: geometric spans
  within 15%, 80% masked, 10% random, 10% kept), each run of mask tokens then made one.

The labels are the sample as stored, ``<s> text </s>``, and the decoder reads them behind ``</s>``: Hugging Face's
``BartForConditionalGeneration`` (``decoder_start_token_id`` 2, ``</s>``); TencentPretrain's decoder reads
``<s> text`` and predicts ``text </s>``.
"""

from __future__ import annotations

import numpy as np

from tencentpretrain.data.bert import mask_tokens
from tencentpretrain.data.corpus import Record, RecordError, decode_text
from tencentpretrain.data.processors import Encoded, ProcessorSpec
from tencentpretrain.data.seq2seq import check_fraction, check_target_length, runs
from tencentpretrain.registry import DATA_PROCESSORS

MASK_RATIO, POISSON_LAMBDA = 0.3, 3.0


@DATA_PROCESSORS.register("bart")
class BartProcessor:
    """Samples of whole sentences with their starts (module docstring); the loader permutes and infills them."""

    formats = ("documents",)
    packs_stream = False  # encode() gives whole samples

    def __init__(self, spec: ProcessorSpec, tokenizer):
        missing = [name for name in ("bos", "eos", "mask") if getattr(tokenizer, f"{name}_id", None) is None]
        if missing:
            raise RecordError(f"the bart processor needs a tokenizer with bos, eos and mask tokens (<s>, </s>, "
                              f"<mask>); this one has no {', '.join(missing)} (name them with --special_tokens_path)")
        if spec.seq_length < 3:
            raise RecordError(f"--seq_length {spec.seq_length} leaves no room for a token between bos and eos")
        if spec.span is None:
            check_fraction(spec.noise[0], "--mask_ratio")
            if spec.noise[1] <= 0:
                raise RecordError(f"--poisson_lambda {spec.noise[1]} must be positive")
        self.tgt_seq_length = check_target_length(spec, spec.seq_length, "the labels (the whole sample)")
        self.spec, self.tokenizer = spec, tokenizer

    def encode(self, records: list[Record]) -> Encoded:
        samples, errors, truncated = [], [], 0
        for line_no, payload in records:
            try:
                lines = [decode_text(line).strip() for line in payload]
            except RecordError as err:
                errors.append((line_no, str(err)))
                continue
            sentences, cut = self.fitted([s for s in self.tokenizer.encode_batch(lines) if s])
            samples.extend(self.gather(sentences))
            truncated += cut
        tokens, flags = [], []
        for sample in samples:
            tokens += [self.tokenizer.bos_id, *(t for sentence in sample for t in sentence), self.tokenizer.eos_id]
            flags += [0, *(int(k == 0) for sentence in sample for k in range(len(sentence))), 0]
        return Encoded(tokens=np.asarray(tokens, np.int32),
                       lengths=np.asarray([sum(map(len, sample)) + 2 for sample in samples], np.int64),
                       documents=len(records) - len(errors), errors=errors, truncated=truncated,
                       sentence_start=np.asarray(flags, np.uint8))

    def fitted(self, sentences: list[list[int]]) -> tuple[list[list[int]], int]:
        """The sentences, each longer than ``seq_length - 2`` cut into pieces that fit; and how many were cut."""
        room = self.spec.seq_length - 2
        out = [sentence[k:k + room] for sentence in sentences for k in range(0, len(sentence), room)]
        return out, sum(len(sentence) > room for sentence in sentences)

    def gather(self, sentences: list[list[int]]) -> list[list[list[int]]]:
        """The sentences in order, gathered into samples while they fit in ``seq_length - 2`` tokens."""
        room, samples, length = self.spec.seq_length - 2, [], 0
        for sentence in sentences:
            if not samples or length + len(sentence) > room:
                samples.append([])
                length = 0
            samples[-1].append(sentence)
            length += len(sentence)
        return samples

    def options(self) -> dict:
        """What the loader's corruption needs, recorded in meta.json."""
        tokenizer = self.tokenizer
        specials = sorted({t for t in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id)})
        noise = {"span": list(self.spec.span)} if self.spec.span is not None else {"noise": list(self.spec.noise)}
        return {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "mask_token": tokenizer.mask_id,
                "specials": specials, "decoder_start": tokenizer.eos_id, "tgt_seq_length": self.tgt_seq_length,
                **noise}

    @staticmethod
    def noiser(meta: dict) -> Denoising:
        return Denoising(meta["options"], meta["vocab_size"])


def permute_sentences(tokens: np.ndarray, sentence_start: np.ndarray, eos: int,
                      rng: np.random.Generator) -> np.ndarray:
    """The tokens with their sentences in a random order; what comes before the first (bos) and the final eos stay."""
    starts = np.flatnonzero(sentence_start)
    if len(starts) < 2:
        return tokens.copy()
    end = len(tokens) - 1 if tokens[-1] == eos else len(tokens)
    sentences = np.split(tokens[starts[0]:end], starts[1:] - starts[0])
    order = rng.permutation(len(sentences))
    return np.concatenate([tokens[:starts[0]], *(sentences[k] for k in order), tokens[end:]])


def poisson_spans(budget: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    """Span lengths drawn from Poisson(``lam``), zeros dropped, until they cover ``budget``; the last one cut."""
    lengths = np.zeros(0, np.int64)
    while lengths.sum() < budget:
        draws = rng.poisson(lam, budget)
        lengths = np.concatenate([lengths, draws[draws > 0]])
    lengths = lengths[:int(np.searchsorted(np.cumsum(lengths), budget)) + 1]
    lengths[-1] -= lengths.sum() - budget
    return lengths


def infilling_mask(count: int, ratio: float, lam: float, rng: np.random.Generator) -> np.ndarray:
    """(count,) bool: ``round(ratio * count)`` tokens (at least 1) in Poisson spans placed at random among the
    others, spans never overlapping (two may touch and then read as one)."""
    budget = min(max(int(round(count * ratio)), 1), count)
    lengths = poisson_spans(budget, lam, rng)
    gaps = np.sort(rng.integers(0, count - budget + 1, len(lengths)))  # kept tokens before each span
    mask, before = np.zeros(count, np.bool_), 0
    for gap, length in zip(gaps.tolist(), lengths.tolist()):
        mask[gap + before:gap + before + length] = True
        before += length
    return mask


class Denoising:
    """The loader's half of the bart data: a stored sample -> (source, labels) (module docstring).

    Args:
        options: the dataset's ``meta.json`` options (:meth:`BartProcessor.options`).
        vocab_size: the random replacements' range (``--span_masking``).
    """

    def __init__(self, options: dict, vocab_size: int):
        self.eos, self.mask_id, self.start = options["eos"], options["mask_token"], options["decoder_start"]
        self.tgt_seq_length, self.vocab_size = options["tgt_seq_length"], vocab_size
        self.specials = np.asarray(options["specials"], np.int64)
        self.noise = tuple(options["noise"]) if "noise" in options else None
        self.span = (float(options["span"][0]), int(options["span"][1])) if "span" in options else None

    @staticmethod
    def raw_length(seq_length: int) -> int:
        """Stored tokens that fit a source of ``seq_length`` (infilling never lengthens)."""
        return seq_length

    def pair(self, tokens: np.ndarray, sentence_start: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(source, labels)`` of one sample's real tokens and its sentence-start flags."""
        source = permute_sentences(tokens, sentence_start, self.eos, rng)
        if self.span is not None:
            source, _ = mask_tokens(source, len(source), rng, self.mask_id, self.vocab_size,
                                    tuple(self.specials.tolist()), span=self.span)
            noise = source == self.mask_id
        else:
            candidates = np.flatnonzero(~np.isin(source, self.specials))
            noise = np.zeros(len(source), np.bool_)
            if len(candidates):
                noise[candidates[infilling_mask(len(candidates), *self.noise, rng)]] = True
        keep = np.ones(len(source), np.bool_)
        for start, end in runs(noise):
            source[start], keep[start + 1:end] = self.mask_id, False
        return source[keep], tokens.copy()
