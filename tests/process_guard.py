"""Every test that starts a real process is marked `e2e` (issue #22).

`scripts/test --fast` runs `-m "not e2e"`: units and in-process tests only. This
plugin keeps that lane honest. A Python audit hook sees every way CPython
starts a process (subprocess and asyncio's subprocesses, os.fork, os.posix_spawn,
os.system, os.spawn*, multiprocessing: fork through os.fork, spawn and
forkserver through _posixsubprocess, wrapped below), in any thread; a test
that is not marked `e2e` and starts one, in its fixtures or its body, fails,
in every lane, naming the command.
"""

import _posixsubprocess
import sys
import threading

import pytest

# Audit events that start a new process (os.exec* replaces this one).
STARTS_A_PROCESS = frozenset(
    {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system"}
)

_lock = threading.Lock()
_current = None  # the test item whose setup, call or teardown is running
_started = []  # what the current test's current phase started


def _record(event, args):
    command = args[1] if event == "subprocess.Popen" else args[:1]  # never the environment
    description = f"{event}: {str(command)[:300]}"
    with _lock:
        # Outside a test (collection: libraries probing at import, e.g. ctypes' ldconfig)
        # nothing is recorded: no marker could apply there.
        if _current is not None:
            _started.append(description)


def _audit(event, args):
    if event in STARTS_A_PROCESS:
        _record(event, args)


sys.addaudithook(_audit)  # cannot be removed: it lasts as long as the test run

_fork_exec = _posixsubprocess.fork_exec


def _audited_fork_exec(*args, **kwargs):
    # multiprocessing's spawn and forkserver start their child here, without an event.
    # (subprocess keeps its own reference, and raises subprocess.Popen first.)
    _record("_posixsubprocess.fork_exec", args[:1])
    return _fork_exec(*args, **kwargs)


_posixsubprocess.fork_exec = _audited_fork_exec


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _current
    with _lock:
        _current = item
        _started.clear()
    try:
        return (yield)
    finally:
        with _lock:
            _current = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    with _lock:
        started = list(_started)
        _started.clear()
    if started and report.passed and item.get_closest_marker("e2e") is None:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} started a real process in its {report.when} but is not marked "
            "e2e: mark it `@pytest.mark.e2e` (scripts/test --fast leaves e2e tests out), "
            "or keep it in-process.\n" + "\n".join(f"  - {s}" for s in started)
        )
    return report

