"""Is another worker process on this machine provably gone?

A worker's live clients (neonize's Go client, the simulator's websocket) live
inside its process: when the process is gone, so are its connections to
WhatsApp. A worker on the same machine can therefore free a dead worker's
leases at once instead of waiting for them to expire (the lease TTL), without
any risk of two live clients for one company (the 440 cycling).

"Same machine" must be exact, or a live process elsewhere would be judged dead
by its pid: the key is the kernel's boot id plus the pid namespace, so two
containers (own pid namespaces) or two hosts never match. A pid can be reused
by an unrelated process: the process's start time (clock ticks since boot, from
/proc/<pid>/stat) tells the two apart. Only Linux gives all three; elsewhere
the key is empty and workers fall back to lease expiry.

Judged gone only when certain: no such pid (ESRCH), a zombie (killed, not yet
reaped by its parent: its sockets are closed), or a different start time.
Anything unreadable (another user's process under /proc's hidepid) counts as
alive.
"""

import functools
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessIdentity:
    host_key: str  # "" where the platform cannot tell (not Linux)
    pid: int
    start: int  # clock ticks after boot; 0 when unknown


@functools.cache
def host_key():
    """`<boot id>/<pid namespace inode>`, or "" when either is unavailable."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot_id = fh.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot_id}/{namespace}" if boot_id else ""


def _stat(pid):
    """(state, start ticks) of `pid` from /proc, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def identity_of(pid):
    """The identity of process `pid` on this machine (empty key if unreadable)."""
    key = host_key()
    stat = _stat(pid) if key else None
    return ProcessIdentity(key if stat else "", pid, stat[1] if stat else 0)


def this_process():
    return identity_of(os.getpid())


def is_gone(identity: ProcessIdentity):
    """True only if the process `identity` names has certainly ended."""
    if not identity.host_key or identity.host_key != host_key() or identity.pid <= 0:
        return False
    try:
        os.kill(identity.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, belongs to another user
    stat = _stat(identity.pid)
    if stat is None:
        return False
    state, start = stat
    return state in {"Z", "X"} or start != identity.start
