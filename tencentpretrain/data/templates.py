"""Prompt templates, shared by the ``alpaca`` data processor and by inference so training and chat
see the same text. ``TEMPLATES.get(name).render(instruction, input)`` gives the prompt; the response
follows it directly."""

from __future__ import annotations

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

    def render(self, instruction: str, input: str = "") -> str:
        """The prompt text for one instruction (the response is appended right after it)."""
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)


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
