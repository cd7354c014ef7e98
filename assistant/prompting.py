"""The system prompt: a per-company template rendered with the business facts.

The template is a Django template rendered by an engine of its own with no
loaders and no tag libraries beyond the built-ins, over a context of plain
strings only: no object, method or setting is reachable from a template an
admin writes ({% include %}, {% load %} of app libraries and attribute walks
into models have nothing to reach). Its hash is the prompt version recorded
with every answer.
"""

import functools
import hashlib

from django.template import Context, Engine, TemplateSyntaxError

DEFAULT_TEMPLATE = """You are the WhatsApp assistant of {{ name }}.
Answer the client's messages briefly and helpfully, in the client's language\
{% if languages %} (we speak: {{ languages }}){% endif %}.
{% if tone %}Tone: {{ tone }}.
{% endif %}Only state facts listed below; if you do not know, say so and offer to \
hand the chat to a person.
{% if opening_hours %}
Opening hours:
{{ opening_hours }}
{% endif %}{% if services %}
Services and prices:
{{ services }}
{% endif %}{% if address %}
Address: {{ address }}
{% endif %}{% if booking_link %}
Bookings: {{ booking_link }}
{% endif %}{% if extra %}
{{ extra }}
{% endif %}"""

FACT_FIELDS = (
    "name",
    "opening_hours",
    "services",
    "address",
    "booking_link",
    "tone",
    "languages",
    "extra",
)

class _PromptEngine(Engine):
    # Engine adds `builtins` to these (Django's tags, {% include %} and all): replace them.
    default_builtins = ["assistant.prompt_tags"]


_engine = _PromptEngine(
    dirs=[],
    app_dirs=False,
    loaders=[("django.template.loaders.locmem.Loader", {})],
    libraries={},
    autoescape=False,
    string_if_invalid="",
    debug=False,
)


class PromptTemplateError(ValueError):
    """The template does not compile."""


@functools.lru_cache(maxsize=256)
def compile_template(source):
    """The compiled template of `source` (cached: compiling is most of rendering)."""
    try:
        return _engine.from_string(source or DEFAULT_TEMPLATE)
    except TemplateSyntaxError as exc:
        raise PromptTemplateError(f"the prompt template does not compile: {exc}") from None


def render_prompt(source, facts):
    """(prompt text, version): `facts` are plain strings keyed by FACT_FIELDS."""
    context = {key: str(facts.get(key) or "") for key in FACT_FIELDS}
    template = compile_template(source)
    try:
        text = template.render(Context(context, autoescape=False)).strip()
    except Exception as exc:  # a filter given a bad argument, {% now %} with a bad format
        raise PromptTemplateError(f"the prompt template does not render: {exc}") from None
    return text, prompt_version(text)


def prompt_version(text):
    return hashlib.sha256(text.encode()).hexdigest()[:12]
