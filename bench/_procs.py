"""Shared by the benchmarks that run real processes (qcluster, runworker).

Children inherit the environment `_setup.configure` prepared (database,
broker, var dir, cluster name) and run with DEBUG off, as in production.
Every child is started and stopped by its own PID, never by name
(tests/process_harness.py).
"""

import math
import os

import _setup  # noqa: F401  (the repository root on sys.path)

# One way to start and stop a child, shared with the end-to-end tests.
from tests.process_harness import Child, free_port, wait_for

__all__ = ["Child", "child_env", "free_port", "percentile", "wait_until"]


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


def percentile(values, q):
    """Nearest-rank percentile of `values` (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_until(predicate, timeout, interval=0.1):
    """Poll `predicate()` until it returns something truthy; None on timeout
    (the harness's wait_for, which raises instead)."""
    try:
        return wait_for(predicate, timeout, "a condition", interval)
    except AssertionError:
        return None
