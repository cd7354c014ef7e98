"""Shared by the benchmarks that run real processes (qcluster, runworker).

Children inherit the environment `_setup.configure` prepared (database,
broker, var dir, cluster name) and run with DEBUG off, as in production.
Every child is started and stopped by its own PID, never by name.
"""

import math
import os
import signal
import subprocess
import sys
import time

from _setup import ROOT


def child_env(**extra):
    """The benchmark's environment with DEBUG off. The secret key is the
    benchmark's own: django-q2 signs task payloads with it."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        DJANGO_ALLOWED_HOSTS="localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Child:
    """One `python <script> <args>` subprocess (manage.py by default), logging to a file."""

    def __init__(self, name, args, env, log_dir, script="manage.py"):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def signal(self, signum):
        if self.alive():
            self.proc.send_signal(signum)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL if it does not exit within `timeout` seconds."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def tail(self, chars=3000):
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-chars:]
        except OSError:
            return ""


def percentile(values, q):
    """Nearest-rank percentile of `values` (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_until(predicate, timeout, interval=0.1):
    """Poll `predicate()` until it returns something truthy; None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)
