"""A model's chat template applied to one user message, as transformers 5 renders it.

:func:`render_chat` gives the text ``tokenizer.apply_chat_template([{"role": "user", "content": text}],
tokenize=False, add_generation_prompt=True)`` gives: the template (a GGUF file's
``tokenizer.chat_template``, a ``tokenizer_config.json``'s ``chat_template``) compiled as
transformers' ``utils/chat_template_utils.py`` compiles it -- jinja2's ``ImmutableSandboxedEnvironment``
with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension and the
``{% generation %}`` tag, ``tojson`` without HTML escaping, the globals ``raise_exception``,
``strftime_now``, ``dict`` and ``namespace`` -- and rendered with ``messages``, ``tools`` and
``documents`` (None), ``add_generation_prompt`` and the special-token strings (``bos_token``,
``eos_token``; a token that is None is left undefined, as transformers leaves it out).

jinja2 (which torch brings) is imported when a template is rendered. A template that does not
compile, or fails while rendering (``raise_exception`` included), is one
:class:`~attnviz.core.errors.InputError` line.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from attnviz.core.errors import InputError

__all__ = ["chat_prompt", "render_chat"]


def chat_prompt(tokenizer, text: str) -> str:
    """``--chat``: ``text`` as one user message in the chat template of ``tokenizer`` (a
    :class:`~attnviz.text.tokenization.Tokenizer`), or one InputError line when it has none."""
    if tokenizer.chat_template is None:
        raise InputError(f"--chat: the tokenizer ({tokenizer.source}) has no chat template "
                         "(a chat_template in tokenizer_config.json, or tokenizer.chat_template "
                         "in a GGUF file); drop --chat")
    return render_chat(tokenizer.chat_template, text, tokenizer.chat_tokens.get("bos_token"),
                       tokenizer.chat_tokens.get("eos_token"))


def render_chat(template: str, text: str, bos_token: str | None, eos_token: str | None) -> str:
    """``text`` as the one user message of ``template``, with the prompt for the assistant's answer."""
    compiled = _compile(template)
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    try:
        return compiled.render(
            messages=[{"role": "user", "content": text}],
            tools=None,
            documents=None,
            add_generation_prompt=True,
            **{name: value for name, value in tokens.items() if value is not None},
        )
    except Exception as exc:  # raise_exception, a sandbox refusal, or any error of the template's own code
        raise InputError(f"the chat template fails on this text: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@lru_cache(maxsize=8)
def _compile(template: str):
    """The template compiled in transformers' sandboxed environment."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers' AssistantTracker,
        whose index tracking is only used for assistant masks)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """A namespace that refuses underscore-prefixed names, as transformers' does."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})"
                )

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    try:
        return environment.from_string(template)
    except jinja2.TemplateError as exc:  # TemplateSyntaxError
        raise InputError(f"the chat template is not a valid jinja2 template: {_one_line(exc)}") from None
