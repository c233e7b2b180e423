"""Preprocessing: stream a corpus through a processor in worker processes into a binary dataset.

The parent reads the corpus in chunks of records and keeps at most a few chunks per worker in flight; workers
return numpy arrays; the parent writes them in corpus order. The output therefore depends only on the corpus
and the options, never on ``processes_num``, and memory stays flat whatever the corpus size.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tencentpretrain.data.binary import DatasetWriter
from tencentpretrain.data.corpus import CorpusError, read_chunks
from tencentpretrain.data.processors import Encoded, ProcessorSpec, build_processor, encode_chunk
from tencentpretrain.errors import InputError

IN_FLIGHT_PER_WORKER = 4
MAX_WARNINGS = 10


def build_dataset(spec: ProcessorSpec, corpus_path: str | Path, dataset_path: str | Path, *,
                  processes_num: int = 1, chunk_size: int = 1024, skip_invalid: bool = False,
                  overwrite: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Preprocess ``corpus_path`` into the dataset directory ``dataset_path``.

    Args:
        spec: processor, tokenizer and sample options.
        corpus_path: the corpus, in ``spec.corpus_format``.
        dataset_path: the dataset directory; written aside and renamed into place at the end.
        processes_num: worker processes (1: encode in this process).
        chunk_size: records per task.
        skip_invalid: skip and count invalid records instead of stopping at the first.
        overwrite: replace an existing ``dataset_path``.
        progress: show a tqdm bar on stderr (None: only on a terminal).

    Returns:
        The dataset's metadata (as written to meta.json), with ``seconds`` added.

    Raises:
        CorpusError: bad input (file and line in the message); nothing is left at ``dataset_path``.
        DatasetError: ``dataset_path`` exists and not ``overwrite``.
    """
    if processes_num < 1 or chunk_size < 1:
        raise InputError(f"--processes_num and --chunk_size must be >= 1, got {processes_num} and {chunk_size}")
    processor = build_processor(spec)  # fails early on a bad tokenizer or special token
    writer = DatasetWriter(dataset_path, processor.tokenizer.vocab_size, overwrite=overwrite)
    start, counts = time.perf_counter(), Counter()
    chunks = read_chunks(corpus_path, spec.corpus_format, chunk_size)
    with writer, _mapper(processes_num) as pmap, _progress_bar(progress) as bar:
        writer.write_offsets(np.zeros(1, np.uint64))
        for encoded in pmap(functools.partial(encode_chunk, spec), chunks):
            _check_errors(encoded, corpus_path, skip_invalid, counts)
            _write_chunk(writer, encoded, counts)
            bar.update(encoded.documents)
            rate = writer.tokens_written / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)
        if not counts["documents"]:
            raise CorpusError(f"{corpus_path}: empty corpus: no documents ({counts['empty']} blank, "
                              f"{counts['skipped']} skipped records)")
        if processor.packs_stream:
            _finish_stream(writer, processor, counts)
        if not counts["samples"]:
            length = getattr(processor, "sample_length", spec.seq_length + 1)
            raise CorpusError(f"{corpus_path}: {writer.tokens_written} tokens make no sample of {length} tokens "
                              f"(--seq_length {spec.seq_length}); lower --seq_length or use --tail pad")
        meta = _meta(spec, processor.tokenizer, counts)
        writer.commit(meta)
    return {**meta, "seconds": time.perf_counter() - start}


def _check_errors(encoded: Encoded, corpus_path: str | Path, skip_invalid: bool, counts: Counter) -> None:
    for line_no, message in encoded.errors:
        if not skip_invalid:
            raise CorpusError(f"{corpus_path}:{line_no}: {message} (--skip_invalid skips such records)")
        if counts["skipped"] < MAX_WARNINGS:
            print(f"warning: skipped {corpus_path}:{line_no}: {message}", file=sys.stderr)
        counts["skipped"] += 1


def _write_chunk(writer: DatasetWriter, encoded: Encoded, counts: Counter) -> None:
    """Write one encoded chunk; samples of processors that give ``lengths`` are indexed right away."""
    base = writer.tokens_written
    writer.write_tokens(encoded.tokens)
    counts.update(documents=encoded.documents, empty=encoded.empty, truncated=encoded.truncated,
                  dropped_turns=encoded.dropped_turns, too_long=encoded.too_long)
    if encoded.loss_mask is not None:
        writer.write_loss_mask(encoded.loss_mask)
    if encoded.sentence_start is not None:
        writer.write_sentence_starts(encoded.sentence_start)
    if encoded.lengths is not None:
        writer.write_offsets(base + np.cumsum(encoded.lengths, dtype=np.uint64))
        if encoded.loss_start is not None:
            writer.write_loss_start(encoded.loss_start)
        if encoded.seg_start is not None:
            writer.write_segments(encoded.seg_start, encoded.labels)
        counts["samples"] += len(encoded.lengths)
        counts["tokens"] += encoded.tokens.size


def _finish_stream(writer: DatasetWriter, processor, counts: Counter) -> None:
    """Cut the packed token stream into samples, drop the unused tail, write the index."""
    total = writer.tokens_written
    offsets = processor.pack(total)
    kept = int(offsets[-1])
    writer.truncate_tokens(kept)
    writer.write_offsets(offsets[1:])
    counts.update(samples=len(offsets) - 1, tokens=kept, dropped_tokens=total - kept)


def _meta(spec: ProcessorSpec, tokenizer, counts: Counter) -> dict[str, Any]:
    keys = ("documents", "samples", "tokens", "skipped", "truncated", "empty", "dropped_tokens", "dropped_turns",
            "too_long")
    return {
        "data_processor": spec.processor,
        "seq_length": spec.seq_length,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": spec.tokenizer,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "special_tokens": tokenizer.special_tokens,
        "corpus_format": spec.corpus_format,
        "options": _options(spec, tokenizer),
        "counts": {key: int(counts[key]) for key in keys},
    }


def _options(spec: ProcessorSpec, tokenizer) -> dict[str, Any]:
    """The processor's settings recorded in meta.json (bert: what the loader's masking needs)."""
    processor = build_processor(spec)
    if hasattr(processor, "options"):  # t5, bart: what the loader's corruption needs
        return processor.options()
    if spec.processor == "lm":
        return {"tail": spec.tail}
    if spec.processor == "alpaca":
        return {"template": spec.template}
    if spec.processor in ("bert", "mlm"):
        from tencentpretrain.data.bert import continuation_ids

        options = {"seed": spec.seed} if spec.processor == "bert" else {"tail": spec.tail}
        options |= {"cls": tokenizer.cls_id, "sep": tokenizer.sep_id, "mask": tokenizer.mask_id}
        if spec.whole_word_masking:
            options["continuation"] = continuation_ids(tokenizer)
        if spec.span is not None:
            options["span"] = list(spec.span)
        return options
    return {"template": spec.template, "loss_on": spec.loss_on}


def _one_thread_each() -> None:
    """In a worker: the processes are the parallelism, so the ``tokenizers`` library encodes on this process's
    thread alone instead of starting a thread per core in every worker."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


class _mapper:
    """Context manager giving an ordered, bounded-memory ``map(fn, items)`` over worker processes.

    ``Pool.imap`` would read the whole input ahead of the workers; here at most ``IN_FLIGHT_PER_WORKER`` tasks
    per worker are pending, so only a few chunks of the corpus are ever in memory.
    """

    def __init__(self, processes_num: int):
        self.processes_num, self.pool = processes_num, None

    def __enter__(self) -> Callable[[Callable, Iterable], Iterator]:
        if self.processes_num == 1:
            return map
        self.pool = multiprocessing.get_context("fork").Pool(self.processes_num, initializer=_one_thread_each)
        return self._map

    def _map(self, fn: Callable, items: Iterable) -> Iterator:
        pending = deque()
        for item in items:
            pending.append(self.pool.apply_async(fn, (item,)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * self.processes_num:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()


def _progress_bar(enabled: bool | None) -> tqdm:
    return tqdm(unit=" docs", file=sys.stderr, disable=None if enabled is None else not enabled,
                dynamic_ncols=True, smoothing=0.1)
