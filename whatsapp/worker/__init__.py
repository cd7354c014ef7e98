"""The in-process session worker: the supervisor of one process's live clients.

`manage.py runworker whatsapp` runs one SessionSupervisor (supervisor.py) on
its asyncio loop; each owned company is a ManagedSession (session.py); the
channel consumer (whatsapp.consumers) only decodes commands (commands.py)
and hands them to the supervisor found through runtime.py.
"""
