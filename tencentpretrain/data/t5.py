"""T5's data: span corruption with sentinels (``--data_processor t5``).

Preprocessing stores plain text: each document (a line, or a JSONL record's ``text``) becomes ``tokens + eos``
(``bos`` before it where the tokenizer has one), the documents are packed back to back and the stream is cut every
``seq_length - 1`` tokens, as Hugging Face's T5 pretraining packs its inputs (TencentPretrain's ``t5`` reuses its
``mlm`` packing, ``[CLS] document [SEP]`` cut every ``seq_length``).

The loader corrupts each sample with a generator seeded by (seed, epoch, sample) (``data/seq2seq.py``). By default
the noise is T5's ``random_spans_noise_mask``: ``round(n * noise_density)`` of the sample's ``n`` tokens (at least
1, at most ``n - 1``) in ``round(noise / mean_noise_span_length)`` spans (at least 1), the noise and the kept tokens
each cut into that many parts of random lengths and interleaved, kept first. With ``--span_masking``
(TencentPretrain's flags) the noise is TencentPretrain's instead: geometric spans within a 15% budget
(``data/bert.py``: ``mask_tokens``), every chosen token corrupted. A special token (bos, eos, pad, a sentinel) is
never noise: a span that reaches one stops before it.

Each noise span becomes one sentinel in the source, ``<extra_id_0>``, ``<extra_id_1>``, ... in order; the source
ends with eos. The labels are each sentinel followed by its span, then eos (Hugging Face's
``run_t5_mlm_flax.py``; TencentPretrain ends them with one more sentinel and ``[SEP]``). The source has at most
``seq_length`` tokens; the labels at most the count :func:`noise_bounds` gives, the default ``--tgt_seq_length``.
"""

from __future__ import annotations

import numpy as np

from tencentpretrain.data.bert import MASK_PROB, mask_tokens
from tencentpretrain.data.corpus import RecordError
from tencentpretrain.data.processors import LmProcessor, ProcessorSpec
from tencentpretrain.data.seq2seq import check_fraction, check_target_length, runs
from tencentpretrain.registry import DATA_PROCESSORS
from tencentpretrain.targets import IGNORE_INDEX
from tencentpretrain.tokenizers import sentinel_ids

NOISE_DENSITY, MEAN_NOISE_SPAN_LENGTH = 0.15, 3.0  # T5's defaults


def noise_counts(length: int, density: float, mean_span_length: float) -> tuple[int, int]:
    """``(noise tokens, noise spans)`` of a sample of ``length`` tokens (T5's random_spans_noise_mask counts)."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = min(max(int(round(noise / mean_span_length)), 1), noise, length - noise)
    return noise, spans


def random_segmentation(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` cut into ``parts`` positive lengths, every such cut equally likely."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(length: int, density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's noise mask: (length,) bool, True on the noise tokens, kept and noise spans interleaved, kept first."""
    noise, spans = noise_counts(length, density, mean_span_length)
    kept_lengths = random_segmentation(length - noise, spans, rng)
    noise_lengths = random_segmentation(noise, spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], 1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), interleaved)


def noise_bounds(spec: ProcessorSpec) -> tuple[int, int]:
    """``(most noise spans, most label tokens)`` of a full sample of ``seq_length - 1`` tokens."""
    length = spec.seq_length - 1
    if spec.span is not None:
        budget = max(1, int(round(length * MASK_PROB)))
        return budget, 2 * budget + 1
    noise, spans = noise_counts(length, *spec.noise)
    return spans, noise + spans + 1


@DATA_PROCESSORS.register("t5")
class T5Processor(LmProcessor):
    """Packed text for T5's span corruption (module docstring); the loader corrupts it."""

    def __init__(self, spec: ProcessorSpec, tokenizer):
        if spec.seq_length < 3:
            raise RecordError(f"--seq_length {spec.seq_length} leaves no room for a kept token, a sentinel and eos")
        if spec.span is None:
            check_fraction(spec.noise[0], "--noise_density")
            if spec.noise[1] < 1:
                raise RecordError(f"--mean_noise_span_length {spec.noise[1]} must be at least 1")
        self.sentinels = sentinel_ids(tokenizer)
        if not self.sentinels or tokenizer.eos_id is None:
            raise RecordError("the t5 processor needs a tokenizer with an eos token and T5's sentinels <extra_id_0>, "
                              "<extra_id_1>, ...; this one has no " + ("sentinels" if tokenizer.eos_id is not None
                                                                       else "eos") +
                              " (T5's SentencePiece model gets T5Tokenizer's 100 with --tokenizer t5)")
        spans, needed = noise_bounds(spec)
        if spans > len(self.sentinels):
            raise RecordError(f"--seq_length {spec.seq_length} makes up to {spans} noise spans, more than the "
                              f"{len(self.sentinels)} sentinels of the tokenizer; lower --seq_length")
        self.tgt_seq_length = check_target_length(spec, needed, "the labels (sentinels, spans and eos)")
        super().__init__(spec, tokenizer)

    @property
    def sample_length(self) -> int:
        """Tokens of a full sample: ``seq_length - 1``, room left for the eos the source ends with."""
        return self.spec.seq_length - 1

    shortest_tail = 2  # a kept token and a noise token

    def options(self) -> dict:
        """What the loader's corruption needs, recorded in meta.json."""
        tokenizer = self.tokenizer
        specials = sorted({t for t in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) if t is not None}
                          | set(self.sentinels))
        noise = {"span": list(self.spec.span)} if self.spec.span is not None else {"noise": list(self.spec.noise)}
        return {"tail": self.spec.tail, "eos": tokenizer.eos_id, "sentinels": self.sentinels, "specials": specials,
                "decoder_start": tokenizer.pad_id, "tgt_seq_length": self.tgt_seq_length, **noise}

    @staticmethod
    def noiser(meta: dict) -> SpanCorruption:
        return SpanCorruption(meta["options"])


class SpanCorruption:
    """The loader's half of the t5 data: a stored sample -> (source, labels) (module docstring).

    Args:
        options: the dataset's ``meta.json`` options (:meth:`T5Processor.options`).
    """

    def __init__(self, options: dict):
        self.eos, self.start, self.tgt_seq_length = options["eos"], options["decoder_start"], options["tgt_seq_length"]
        self.sentinels = np.asarray(options["sentinels"], np.int64)
        self.specials = np.asarray(options["specials"], np.int64)
        self.noise = tuple(options["noise"]) if "noise" in options else None
        self.span = (float(options["span"][0]), int(options["span"][1])) if "span" in options else None

    @staticmethod
    def raw_length(seq_length: int) -> int:
        """Stored tokens that fit a source of ``seq_length``."""
        return seq_length - 1

    def noise_mask(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,) bool, True on the tokens to cut out; never a special token."""
        special = np.isin(tokens, self.specials)
        if self.span is not None:
            _, tgt = mask_tokens(tokens, len(tokens), rng, 0, 1, tuple(self.specials.tolist()), span=self.span)
            return tgt != IGNORE_INDEX  # TencentPretrain's spans never cross a special
        if len(tokens) < 2:
            return np.zeros(len(tokens), np.bool_)
        noise = random_spans_noise_mask(len(tokens), *self.noise, rng)
        for start, end in runs(noise):
            hit = np.flatnonzero(special[start:end])
            if hit.size:
                noise[start + hit[0]:end] = False
        return noise

    def pair(self, tokens: np.ndarray, sentence_start: np.ndarray | None,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(source, labels)`` of one sample's real tokens."""
        noise = self.noise_mask(tokens, rng)
        starts = noise & ~np.concatenate([[False], noise[:-1]])
        sentinels = self.sentinels[:int(starts.sum())]
        source = tokens.copy()
        source[starts] = sentinels
        source = np.append(source[~noise | starts], self.eos)
        labels = np.append(np.insert(tokens[noise], np.flatnonzero(starts[noise]), sentinels), self.eos)
        return source, labels
