"""The in-process session worker: the supervisor of one process's live clients.

`manage.py runworker whatsapp` runs one SessionSupervisor (supervisor.py) on
its asyncio loop (ownership.py: leases, peers, rebalancing; command_handling.py:
commands and hints); each owned company is a ManagedSession (session.py, its
client's lifecycle in lifecycle.py); the channel consumer (whatsapp.consumers)
only decodes commands (commands.py) and hands them to the supervisor found
through runtime.py.
"""
