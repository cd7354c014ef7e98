"""The process's one supervisor (neonize's event loop is module-global, so a
process runs one loop and one supervisor).

`manage.py runworker whatsapp` installs it with its worker id before the loop
starts; anything else (a test, a stray message) gets one built from settings.
"""

_supervisor = None


def install_supervisor(supervisor):
    global _supervisor
    _supervisor = supervisor
    return supervisor


def get_supervisor():
    global _supervisor
    if _supervisor is None:
        from .supervisor import SessionSupervisor

        _supervisor = SessionSupervisor()
    return _supervisor


def clear_supervisor():
    global _supervisor
    _supervisor = None
