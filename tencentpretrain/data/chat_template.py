"""Chat templates as data: a Jinja template over ``messages``, rendered in jinja2's sandbox as transformers renders
``tokenizer.apply_chat_template`` (same environment settings, filters and globals), so a Hugging Face model's own
``chat_template`` renders here what it renders there.

``load_template(spec)`` takes a registered name (``alpaca``, ``alpaca_fold``, ``none``: ``data/templates.py``), a
Jinja file, a ``tokenizer_config.json`` or a Hugging Face directory holding one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tencentpretrain.errors import InputError


class TemplateError(InputError):
    """A chat template that cannot be read or rendered; the message names the file or the template."""


@cache
def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag): renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template and where it came from.

    Attributes:
        source: the Jinja text (what ``tokenizer_config.json`` holds as ``chat_template``).
        name: a registered name, or the file it was read from.
    """

    source: str
    name: str = "chat_template"

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False, bos_token: str = "",
               eos_token: str = "", **extra) -> str:
        """The text of ``messages`` (``[{"role", "content"}]``), as ``apply_chat_template(tokenize=False)`` gives."""
        import jinja2

        try:
            template = _compiled(self.source)
            return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                   bos_token=bos_token, eos_token=eos_token, **extra)
        except jinja2.TemplateError as err:
            raise TemplateError(f"chat template {self.name}: {err}") from None


@cache
def _compiled(source: str):
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"chat template: line {err.lineno}: {err.message}") from None


def template_from_config(config: dict, where: str) -> ChatTemplate:
    """The ``chat_template`` of a ``tokenizer_config.json`` dict (a string, or named templates: the default)."""
    found = config.get("chat_template")
    if isinstance(found, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
        found = named.get("default")
    if not isinstance(found, str) or not found:
        raise TemplateError(f"{where}: no chat_template (a Jinja string) in it")
    return ChatTemplate(found, where)


def chat_template_path(model_path: str | Path) -> Path:
    """Where the chat template of a checkpoint converted from Hugging Face is kept: ``<model>.chat_template.jinja``
    beside it."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".chat_template.jinja")


def load_template(spec: str | ChatTemplate) -> ChatTemplate:
    """A registered template name, a Jinja file, a ``tokenizer_config.json`` or a Hugging Face directory."""
    from tencentpretrain.registry import TEMPLATES

    if isinstance(spec, ChatTemplate):
        return spec
    if spec in TEMPLATES:
        return ChatTemplate(TEMPLATES.get(spec).chat(), spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer_config.json"
    if not path.is_file():
        raise TemplateError(f"template {spec!r}: neither a name ({', '.join(TEMPLATES.names())}) nor a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"{path}: cannot read the template: {err}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TemplateError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(data, dict):
            raise TemplateError(f"{path}: expected a JSON object with a chat_template")
        template = template_from_config(data, str(path))
    else:
        template = ChatTemplate(text, str(path))
    try:
        _compiled(template.source)  # a syntax error is reported now, naming the file and line
    except TemplateError as err:
        raise TemplateError(f"{path}: {err}") from None
    return template


def exported_source(spec: str | ChatTemplate, add_space_prefix: bool) -> str:
    """The Jinja text to ship with an exported model (``tokenizer_config.json``, a GGUF file), whose consumers
    tokenize the whole rendering at once: a registered template with the space SentencePiece puts before a text
    written before each answer (``Template.chat``), so their ids equal ours; a template read from a file as it is.
    """
    from tencentpretrain.registry import TEMPLATES

    template = load_template(spec)
    if template.name in TEMPLATES:
        return TEMPLATES.get(template.name).chat(" " if add_space_prefix else "")
    return template.source
