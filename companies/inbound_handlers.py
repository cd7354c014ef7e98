"""The inbound message handlers a company may choose from.

The registry is a setting, WHATSAPP_INBOUND_HANDLERS: name -> {"path": dotted
path, "label": what the admin shows}. A company stores a *name*
(Company.inbound_handler; blank = WHATSAPP["INBOUND_HANDLER"], itself a name).
Only the registry's dotted paths are ever imported, never a value stored on a
row; `manage.py check` (run by every command at start) imports each entry.
"""

from django.conf import settings


class UnknownHandler(LookupError):
    """A handler name that the registry does not hold."""


def registered_handlers():
    return settings.WHATSAPP_INBOUND_HANDLERS


def handler_choices():
    """(name, label) pairs: the choices of Company.inbound_handler. (A malformed
    entry is listed by its name; the system check reports it.)"""
    return [
        (name, entry.get("label", name) if isinstance(entry, dict) else name)
        for name, entry in registered_handlers().items()
    ]


def default_handler_name():
    return settings.WHATSAPP["INBOUND_HANDLER"]


def registered_handler_path(name):
    """The dotted path registered as `name`, or raise UnknownHandler."""
    entry = registered_handlers().get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        known = ", ".join(sorted(registered_handlers())) or "none"
        raise UnknownHandler(
            f"inbound handler {name!r} is not registered (WHATSAPP_INBOUND_HANDLERS has: "
            f"{known}); pick one of these for the company"
        )
    return entry["path"]
