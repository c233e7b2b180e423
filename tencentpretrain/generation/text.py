"""Text on top of the token engine: generated tokens streamed as text with stop strings (``stream_text``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from tencentpretrain.generation.engine import Engine
from tencentpretrain.generation.finish import LENGTH, finish_reason
from tencentpretrain.generation.sampling import SamplingParams

REPLACEMENT = "\ufffd"  # what SentencePiece and byte-level BPE decode an incomplete UTF-8 byte sequence to


class TextStream:
    """Turns one row's new tokens into text as it becomes final, and watches for stop strings.

    Text is held back while it ends in an incomplete character or could be the start of a stop string.
    The generated ids are decoded after the prompt's last token so a leading space is kept.

    Args:
        tokenizer: anything with ``decode(ids)``.
        prefix: the last prompt token (decoded with the output, then cut off).
        stop: strings that end the text (not included in it).
    """

    def __init__(self, tokenizer, prefix: int | None = None, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.prefix = [] if prefix is None else [prefix]
        self.skip = len(tokenizer.decode(self.prefix)) if self.prefix else 0
        self.stop_strings = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # final text so far (emitted)
        self.stopped = False  # a stop string was found
        self.pending = ""  # final text ``accept`` made that ``take`` has not handed out

    def _decoded(self) -> str:
        return self.tokenizer.decode(self.prefix + self.ids)[self.skip:]

    def push(self, token: int) -> str:
        """Add a token; return the text that became final (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        full = self._decoded()
        cut = self._stop_index(full)
        if cut is not None:
            self.stopped = True
            return self._emit(full[:cut])
        safe = full.rstrip(REPLACEMENT)
        return self._emit(safe[:len(safe) - self._held(safe)])

    def accept(self, token: int) -> bool:
        """``push`` as the consumer of ``finish.finish_reason``: the text that became final is kept for ``take``;
        False once a stop string has appeared."""
        self.pending += self.push(token)
        return not self.stopped

    def take(self) -> str:
        """The text ``accept`` made final since the last ``take``."""
        piece, self.pending = self.pending, ""
        return piece

    def finish(self) -> str:
        """The text still held back (the row ended): everything but a trailing incomplete character."""
        if self.stopped:
            return ""
        return self._emit(self._decoded().rstrip(REPLACEMENT))

    def _emit(self, upto: str) -> str:
        new = upto[len(self.text):] if upto.startswith(self.text) else ""
        self.text += new
        return new

    def _stop_index(self, full: str) -> int | None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop_strings), default=0))
        found = [i for i in (full.find(s, start) for s in self.stop_strings) if i >= 0]
        return min(found) if found else None

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        best = 0
        for stop in self.stop_strings:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[-n:]):
                    best = n
                    break
        return best


@dataclass
class Completion:
    """The result of one prompt: its text, why it ended ("stop" or "length") and token counts."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def stream_text(engine: Engine, tokenizer, prompts: Sequence[Sequence[int]], max_tokens: int,
                sampling: SamplingParams = SamplingParams(), stop: Sequence[str] = (),
                seed: int | None = None) -> Iterator[tuple[int, str]]:
    """Generate a batch and yield ``(row, new_text)`` pieces as they become final; then return the completions.

    Use ``completions = yield from stream_text(...)`` or the ``generate_text`` wrapper.
    """
    streams = [TextStream(tokenizer, p[-1] if p else None, stop) for p in prompts]
    counts, reasons = [0] * len(prompts), [None] * len(prompts)
    run = engine.stream(prompts, max_tokens, sampling, seed)
    for step in run:
        for row, token in enumerate(step.tokens):
            if reasons[row] is not None:
                continue
            counts[row] += 1
            reasons[row] = finish_reason(token, counts[row], max_tokens, engine.eos_ids, streams[row].accept)
            if reasons[row] is not None:
                run.stop(row)
            piece = streams[row].take()
            if piece:
                yield row, piece
    completions = []
    for row, text_stream in enumerate(streams):
        piece = text_stream.finish()
        if piece:
            yield row, piece
        completions.append(Completion(text_stream.text, reasons[row] or LENGTH, len(prompts[row]), counts[row]))
    return completions


def generate_text(engine: Engine, tokenizer, prompts: Sequence[Sequence[int]], max_tokens: int,
                  sampling: SamplingParams = SamplingParams(), stop: Sequence[str] = (), seed: int | None = None,
                  on_text: Callable[[int, str], None] | None = None) -> list[Completion]:
    """Generate a batch of completions, calling ``on_text(row, piece)`` for each piece of streamed text."""
    pieces = stream_text(engine, tokenizer, prompts, max_tokens, sampling, stop, seed)
    while True:
        try:
            row, piece = next(pieces)
        except StopIteration as done:
            return done.value
        if on_text is not None:
            on_text(row, piece)
