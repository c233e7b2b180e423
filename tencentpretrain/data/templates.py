"""Prompt templates, shared by the ``alpaca`` and ``chat`` data processors and by inference so training and chat
see the same text. ``TEMPLATES.get(name).render(instruction, input)`` gives the prompt of one instruction (the
response follows it directly); ``.chat`` is the same template as a Jinja chat template over a conversation
(``data/chat_template.py``), what ``tokenizer_config.json`` carries as ``chat_template``.

Each turn of a conversation renders as ``bos_token + prompt(question) + answer + eos_token``, a system message
going before the first question as its own paragraph: the ids ``inference/run_llama.py`` and the server always
gave, now rendered from the Jinja text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tencentpretrain.registry import TEMPLATES


@dataclass(frozen=True)
class Template:
    """A prompt with and without an input field.

    Attributes:
        with_input: format string with ``{instruction}`` and ``{input}``.
        without_input: format string with ``{instruction}``, used when the input is empty.
    """

    with_input: str
    without_input: str

    def chat(self, answer_prefix: str = "") -> str:
        """This template as a Jinja chat template over ``messages`` (what ``tokenizer_config.json`` and a GGUF
        file carry as ``chat_template``).

        System messages (before the first user message) are joined by newlines and put, followed by a blank line,
        before the first question; each question is rendered through ``without_input`` after ``bos_token``; each
        answer follows its prompt (after ``answer_prefix``; an empty answer is no text) and ends with
        ``eos_token``. Roles out of order raise. The prompt already ends with the response header, so
        ``add_generation_prompt`` changes nothing.

        Args:
            answer_prefix: text between a prompt and its answer. Ours tokenizes the prompt and the answer apart,
                so a SentencePiece tokenizer that adds a space prefix puts one before the answer; a consumer that
                tokenizes the whole rendering at once (llama.cpp, ``apply_chat_template``) needs it written: " ".
        """
        marker = "\x00"
        before, after = self.without_input.format(instruction=marker).split(marker)
        return "\n".join((  # every line ends in a whitespace-stripping tag, so the newlines render as nothing
            "{%- set ns = namespace(system='', systems=0, turn=0) -%}",
            "{%- for message in messages -%}",
            "{%- if message['role'] == 'system' -%}",
            "{%- if ns.turn > 0 -%}{{ raise_exception('system messages must come before the conversation') }}"
            "{%- endif -%}",
            "{%- set ns.system = (ns.system ~ '\\n' if ns.systems > 0 else '') ~ message['content'] -%}",
            "{%- set ns.systems = ns.systems + 1 -%}",
            "{%- elif message['role'] == 'user' and ns.turn % 2 == 0 -%}",
            "{%- set question = (ns.system ~ '\\n\\n' ~ message['content']) if ns.turn == 0 and ns.system "
            "else message['content'] -%}",
            "{{ bos_token ~ " + _literal(before) + " ~ question ~ " + _literal(after) + " }}",
            "{%- set ns.turn = ns.turn + 1 -%}",
            "{%- elif message['role'] == 'assistant' and ns.turn % 2 == 1 -%}",
            "{{ ((" + _literal(answer_prefix) + " ~ message['content']) if message['content'] else '') "
            "~ eos_token }}",
            "{%- set ns.turn = ns.turn + 1 -%}",
            "{%- else -%}",
            "{{ raise_exception('unexpected role ' ~ message['role'] ~ ': expected system messages first, then "
            "user and assistant alternating') }}",
            "{%- endif -%}",
            "{%- endfor -%}",
        ))

    def render(self, instruction: str, input: str = "") -> str:
        """The prompt text for one instruction (the response is appended right after it)."""
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON's escapes are Jinja's)."""
    return json.dumps(text, ensure_ascii=False)


ALPACA = Template(
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
)
TEMPLATES.register("alpaca")(ALPACA)

# The input folded into the instruction (as the Chinese-LLaMA-Alpaca recipes do), one prompt shape for all.
TEMPLATES.register("alpaca_fold")(Template(
    with_input=ALPACA.without_input.replace("{instruction}", "{instruction}\n{input}"),
    without_input=ALPACA.without_input,
))

# No template: the instruction (and input, on its own line) is the prompt; for base models.
TEMPLATES.register("none")(Template(with_input="{instruction}\n{input}", without_input="{instruction}"))
