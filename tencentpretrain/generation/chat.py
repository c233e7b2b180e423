"""Text on top of the token engine: prompts through the training template, streamed text with stop strings,
and multi-turn chat histories cut to fit the context.

Prompts are tokenised as training saw them (the ``alpaca`` and ``chat`` data processors): the conversation is
rendered through the chat template (``data/chat_template.py``) and each piece tokenised as ``data/chat.py`` does;
for the registered templates a turn is ``bos + encode(prompt) + encode(response) + eos``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tencentpretrain.data.chat import conversation_ids
from tencentpretrain.data.chat_template import ChatTemplate, load_template
from tencentpretrain.generation.engine import Engine
from tencentpretrain.generation.finish import prompt_budget
from tencentpretrain.generation.sampling import SamplingParams
from tencentpretrain.generation.text import generate_text
from tencentpretrain.tokenizers import prefix_ids


def encode_prompt(tokenizer, text: str, add_bos: bool = True) -> list[int]:
    """``bos + encode(text)`` (no bos for a tokenizer without one, such as Qwen's)."""
    return (prefix_ids(tokenizer) if add_bos else []) + tokenizer.encode(text)


def fit_prompt(ids: list[int], budget: int) -> list[int]:
    """Keep the first token (bos) and the last ``budget - 1`` others when ``ids`` is longer than ``budget``."""
    if budget < 1:
        raise ValueError(f"no room for the prompt: budget {budget}")
    return ids if len(ids) <= budget else ids[:1] + ids[len(ids) - budget + 1:]


def chat_prompt(tokenizer, template: str | ChatTemplate, history: Sequence[tuple[str, str]], question: str,
                budget: int, system: str = "") -> list[int]:
    """Token ids of a conversation, rendered through a chat template and cut to ``budget`` tokens.

    Args:
        tokenizer: the model's tokenizer.
        template: a registered name, a template file or a ``ChatTemplate`` (``load_template``).
        history: earlier (question, answer) turns, oldest first; the oldest are dropped until the prompt fits.
        question: the new user message.
        budget: the most prompt tokens (context length minus room for the answer).
        system: the system message (the registered templates put it before the first kept question).

    Returns:
        The ids of the kept turns and the question with the generation prompt, as ``data/chat.py`` tokenises a
        conversation for training (the last prompt itself cut from the left if even it alone does not fit).
    """
    template = load_template(template)
    for first in range(len(history) + 1):
        messages = [{"role": "system", "content": system}] if system else []
        for q, a in history[first:]:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        ids = conversation_ids(tokenizer, template, messages, add_generation_prompt=True)[0]
        if len(ids) <= budget:
            return ids
    return fit_prompt(ids, budget)


def question_ids(tokenizer, template: str | ChatTemplate, question: str) -> list[int]:
    """Token ids of one question through the template, uncut (``run_llama.py``'s prompts)."""
    return chat_prompt(tokenizer, template, [], question, 1 << 62)


def split_messages(messages: Sequence[dict]) -> tuple[str, list[tuple[str, str]], str]:
    """OpenAI-style ``[{"role", "content"}]`` -> (system text, earlier (question, answer) turns, new question).

    Raises:
        ValueError: naming the message that breaks the expected order (system*, (user, assistant)*, user).
    """
    system, turns, pending = [], [], None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{i}] must be an object with a string 'content'")
        role, content = message.get("role"), message["content"]
        if role == "system" and not turns and pending is None:
            system.append(content)
        elif role == "user" and pending is None:
            pending = content
        elif role == "assistant" and pending is not None:
            turns.append((pending, content))
            pending = None
        else:
            raise ValueError(f"messages[{i}]: unexpected role {role!r} here; expected system messages first, "
                             "then user and assistant alternating, ending with user")
    if pending is None:
        raise ValueError("the last message must have role 'user'")
    return "\n".join(system), turns, pending


class ChatSession:
    """A multi-turn conversation that remembers its turns.

    Args:
        engine: the generation engine.
        tokenizer: the model's tokenizer.
        template: a registered name, a template file or a ``ChatTemplate`` (the one the model was tuned with).
        seq_length: context size: prompt plus answer never exceed it (oldest turns are dropped).
        max_tokens: most tokens per answer.
        sampling: how tokens are chosen.
        stop: strings that end an answer.
        system: optional text before the conversation.
    """

    def __init__(self, engine: Engine, tokenizer, template: str | ChatTemplate = "alpaca", seq_length: int = 2048,
                 max_tokens: int = 512, sampling: SamplingParams = SamplingParams(), stop: Sequence[str] = (),
                 system: str = ""):
        if max_tokens >= seq_length:
            raise ValueError(f"max_tokens {max_tokens} leaves no room for a prompt in seq_length "
                             f"{seq_length}")
        self.engine, self.tokenizer, self.template = engine, tokenizer, load_template(template)
        self.seq_length, self.max_tokens = seq_length, max_tokens
        self.sampling, self.stop, self.system = sampling, tuple(stop), system
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        """Forget the conversation."""
        self.history.clear()

    def ask(self, question: str, on_text: Callable[[str], None] | None = None, seed: int | None = None) -> str:
        """Answer ``question`` in the context of the earlier turns, streaming pieces to ``on_text``."""
        ids = chat_prompt(self.tokenizer, self.template, self.history, question,
                          prompt_budget(self.seq_length, self.max_tokens), self.system)
        callback = None if on_text is None else (lambda _row, piece: on_text(piece))
        (completion,) = generate_text(self.engine, self.tokenizer, [ids], self.max_tokens, self.sampling,
                                      self.stop, seed, callback)
        self.history.append((question, completion.text))
        return completion.text
