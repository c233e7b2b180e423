"""Conversations: records in ShareGPT or OpenAI form -> messages -> token ids with a loss mask from rendering.

A record is ShareGPT's (``{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}``, the
LLaMA-Factory keys) or OpenAI's (``{"messages": [{"role": "user"|"assistant"|"system", "content"}]}``, the content a
string or a list of ``{"type": "text", "text"}`` parts). ``messages_of`` checks and normalises it.

``conversation_segments`` renders the conversation through a chat template and finds each assistant turn by
rendering prefixes (the conversation before the turn with the generation prompt, then with the turn): the text in
between is the turn, answer and end token, which the loss covers. So the mask comes from the template itself. A
template that renders earlier turns differently once later ones follow (Qwen3 drops the thinking block of all but
the last answer) is read instead by finding each answer in the whole rendering, with the end text the template
writes after it. The text trained on is always the whole rendering. Each piece of text is tokenized on its own; the
tokenizer's bos and eos written in the text become their ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tencentpretrain.data.chat_template import ChatTemplate, TemplateError, load_template
from tencentpretrain.data.corpus import RecordError, parse_json
from tencentpretrain.registry import DATA_PROCESSORS

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
OPENAI_ROLES = ("system", "user", "assistant")
LOSS_ON = ("all", "last")


def _content(value, where: str) -> str:
    """A message's text: a string, or OpenAI's list of text parts joined."""
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RecordError(f"{where}: content part {i} must be {{\"type\": \"text\", \"text\": ...}}")
            parts.append(part["text"])
        value = "".join(parts)
    if not isinstance(value, str):
        raise RecordError(f"{where}: content must be a string or a list of text parts, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"{where}: empty content")
    return value


def messages_of(record) -> list[dict[str, str]]:
    """The ``[{"role", "content"}]`` of one record, checked: system messages first, then user and assistant
    alternating from user, at least one assistant turn."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        turns, role_key, text_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
        key = "conversations"
    elif "messages" in record:
        turns, role_key, text_key, roles = record["messages"], "role", "content", {r: r for r in OPENAI_ROLES}
        key = "messages"
    else:
        raise RecordError(f"expected a 'conversations' (ShareGPT) or 'messages' (OpenAI) key; keys: "
                          f"{', '.join(map(repr, record)) or 'none'}")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"{key!r} must be a non-empty list")
    messages = []
    if isinstance(record.get("system"), str) and record["system"].strip():
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where}: expected an object")
        role = roles.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise RecordError(f"{where}: unknown {role_key} {turn.get(role_key)!r}; known: {', '.join(roles)}")
        previous = messages[-1]["role"] if messages else None
        if role == "system" and previous not in (None, "system"):
            raise RecordError(f"{where}: a system message after the conversation started")
        if role == "user" and previous == "user":
            raise RecordError(f"{where}: two user turns in a row")
        if role == "assistant" and previous != "user":
            raise RecordError(f"{where}: an assistant turn must follow a user turn")
        messages.append({"role": role, "content": _content(turn.get(text_key), where)})
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(f"{key!r} has no assistant turn: nothing to learn")
    return messages


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation: its text, whether the loss covers it, and the assistant turn it ends
    (its index among the assistant turns) or None."""

    text: str
    loss: bool
    turn: int | None = None


def conversation_segments(template: ChatTemplate, messages: Sequence[dict], tokens: dict[str, str],
                          add_generation_prompt: bool = False) -> list[Segment]:
    """The rendering of the whole conversation cut into pieces: prompt text (no loss) and each assistant turn
    (loss: the answer and the end text the template writes after it)."""

    def render(upto: int, generation: bool) -> str:
        return template.render(messages[:upto], add_generation_prompt=generation, **tokens)

    whole = render(len(messages), add_generation_prompt)
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    spans = _prefix_spans(render, turns, whole)
    if spans is None:
        spans = _located_spans(render, messages, turns, whole, template.name)
    segments, done = [], 0
    for turn, (start, end) in enumerate(spans):
        segments += [Segment(whole[done:start], False), Segment(whole[start:end], True, turn)]
        done = end
    segments.append(Segment(whole[done:], False))
    return [s for s in segments if s.text or s.loss]


def _prefix_spans(render, turns: list[int], whole: str) -> list[tuple[int, int]] | None:
    """Each assistant turn as the text between the rendering of the conversation before it (with the generation
    prompt) and with it; None when a rendering of a prefix is not a prefix of the next (the template renders
    earlier turns differently once later ones follow, as Qwen3's does with its thinking blocks)."""
    spans, done = [], ""
    for i in turns:
        before, after = render(i, True), render(i + 1, False)
        if not before.startswith(done) or not after.startswith(before):
            return None
        spans.append((len(before), len(after)))
        done = after
    return spans if whole.startswith(done) else None


def _located_spans(render, messages, turns: list[int], whole: str, name: str) -> list[tuple[int, int]]:
    """Each assistant turn found in the whole rendering: its content (the next occurrence after the turn before)
    and the end text the template writes after it when it is the last message (``<|im_end|>``...), as far as the
    whole rendering has it."""
    spans, done = [], 0
    for i in turns:
        content = messages[i]["content"].strip()
        start = whole.find(content, done)
        if start < 0:
            raise TemplateError(f"chat template {name}: renders earlier turns differently once later ones follow, "
                                f"and the answer of message {i} is not in its rendering; the loss mask cannot be "
                                "taken from it")
        end = start + len(content)
        alone = render(i + 1, False)
        suffix = alone[alone.rfind(content) + len(content):]
        while suffix and not whole.startswith(suffix, end):
            suffix = suffix[:-1]
        spans.append((start, end + len(suffix)))
        done = end + len(suffix)
    return spans


def special_texts(tokenizer) -> dict[str, str]:
    """``bos_token``/``eos_token`` for a template: the pieces of the tokenizer's bos and eos."""
    ids = {"bos_token": tokenizer.bos_id, "eos_token": tokenizer.eos_id}  # a tokenizer without bos (Qwen) gives none
    return {name: tokenizer.id_to_piece(i) for name, i in ids.items() if i is not None}


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, where the tokenizer's bos and eos pieces written in it become their ids."""
    if not text:
        return []
    specials = {tokenizer.id_to_piece(i): i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None}
    ids = []
    for part in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids += tokenizer.encode(part)
    return ids


def conversation_ids(tokenizer, template: ChatTemplate, messages: Sequence[dict],
                     add_generation_prompt: bool = False) -> tuple[list[int], list[bool], list[int]]:
    """(ids, loss per id, the number of ids up to the end of each assistant turn) of one conversation."""
    ids, loss, ends = [], [], []
    for segment in conversation_segments(template, messages, special_texts(tokenizer), add_generation_prompt):
        piece = encode_text(tokenizer, segment.text)
        ids += piece
        loss += [segment.loss] * len(piece)
        if segment.turn is not None:
            ends.append(len(ids))
    return ids, loss, ends


@DATA_PROCESSORS.register("chat")
class ChatProcessor:
    """Multi-turn instruction tuning: one conversation -> one sample, the loss on the assistant turns.

    ``--loss_on all`` (default) counts every assistant turn and its end token, ``last`` the last kept one only.
    A conversation longer than ``seq_length + 1`` tokens keeps its first turns that fit, cut at the end of an
    assistant turn, never inside one; the turns left out are counted (``dropped_turns``), and a conversation whose
    first turn alone does not fit is left out whole (``too_long``).
    """

    formats = ("json", "jsonl")
    packs_stream = False

    def __init__(self, spec, tokenizer):
        self.spec, self.tokenizer = spec, tokenizer
        self.template = load_template(spec.template)
        if spec.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {spec.loss_on!r}")

    def sample(self, payload) -> tuple[list[int], list[bool], int]:
        """(ids, loss per id, assistant turns dropped) of one record; ([], [], turns) when none fits."""
        messages = messages_of(parse_json(payload))
        ids, loss, ends = conversation_ids(self.tokenizer, self.template, messages)
        most = self.spec.seq_length + 1
        kept = sum(end <= most for end in ends)
        if kept == 0:
            return [], [], len(ends)
        end = len(ids) if kept == len(ends) and len(ids) <= most else ends[kept - 1]
        ids, loss = ids[:end], loss[:end]
        if self.spec.loss_on == "last":
            start = ends[kept - 2] if kept > 1 else 0
            loss = [flag and i >= start for i, flag in enumerate(loss)]
        return ids, loss, len(ends) - kept

    def encode(self, records):
        from tencentpretrain.data.processors import Encoded, flatten

        samples, masks, errors, dropped, too_long, cut = [], [], [], 0, 0, 0
        for line_no, payload in records:
            try:
                ids, loss, left_out = self.sample(payload)
            except RecordError as err:
                errors.append((line_no, str(err)))
                continue
            dropped += left_out
            cut += bool(left_out and ids)
            if not ids:
                too_long += 1
                continue
            samples.append(ids)
            masks.append(loss)
        lengths = np.fromiter(map(len, samples), np.int64, len(samples))
        return Encoded(tokens=flatten(samples), lengths=lengths, loss_start=np.zeros(len(samples), np.int64),
                       loss_mask=flatten([[int(f) for f in m] for m in masks]).astype(np.uint8),
                       documents=len(samples), errors=errors, truncated=cut, dropped_turns=dropped,
                       too_long=too_long)
