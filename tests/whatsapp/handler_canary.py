"""Imported by nothing: test_handler_registry checks that storing this module's
dotted path on a company never gets it imported (it stays out of sys.modules)."""

CALLS = []


def handle(message):
    CALLS.append(message.pk)
