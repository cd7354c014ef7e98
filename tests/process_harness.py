"""Real child processes for tests and benchmarks: one way to start, wait, stop.

Shared by tests/e2e_processes.py (the end-to-end tests' simulator, workers,
job cluster and web server) and bench/_procs.py (the benchmarks, which put
the repository root on sys.path). No Django here: callers build the
environment.

    child = Child("w1", ["runworker", "whatsapp"], env, log_dir)
    wait_for(lambda: ready(), 30, "the worker to register")
    child.stop()              # SIGTERM, then SIGKILL after the timeout

A child writes everything it prints to `<log_dir>/<name>.log`; `tail()` reads
the end of it for a failure message. Every child is signalled by its own
process id, never by name.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout, what, interval=0.1):
    """Poll `predicate` until it returns something true (and return that);
    AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Child:
    """`python <script> <args>` (manage.py by default; script=None for `python
    <args>`, e.g. `-m daphne ...`) in the repository root.

    `own_group`: the child leads a process group of its own, and stopping it
    also kills what it left in that group (qcluster forks its workers)."""

    def __init__(self, name, args, env, log_dir, script="manage.py", own_group=False, append=False):
        self.name = name
        self.own_group = own_group
        self.log_path = os.path.join(log_dir, f"{name}.log")
        # The child keeps its own descriptor. `append`: a restarted child (same
        # name) adds to its log instead of starting it afresh.
        with open(self.log_path, "ab" if append else "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *([str(script)] if script else []), *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=own_group,
            )
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, signum):
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout):
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds.
        Returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout=20):
        """Wait for a child told to stop; SIGKILL it after `timeout` seconds."""
        code = self.wait(timeout)
        if code is None:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.kill_leftovers()
        return code

    def kill_leftovers(self):
        if not self.own_group:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, chars=3000):
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-chars:]
        except OSError:
            return ""
