"""The only tags and filters a company's prompt template may use: Django's
built-in filters and the control-flow tags. No {% load %}, {% include %},
{% extends %}, {% debug %} (it prints the loaded modules), {% url %} or
{% csrf_token %}: nothing that reaches beyond the facts given to it."""

from django.template import Library, defaultfilters, defaulttags

ALLOWED_TAGS = {
    "if",
    "for",
    "with",
    "firstof",
    "cycle",
    "comment",
    "filter",
    "spaceless",
    "now",
    "templatetag",
    "autoescape",
    "ifchanged",
    "resetcycle",
    "verbatim",
    "widthratio",
}

register = Library()
register.tags = {k: v for k, v in defaulttags.register.tags.items() if k in ALLOWED_TAGS}
register.filters = dict(defaultfilters.register.filters)
