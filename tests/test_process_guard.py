"""The fast lane's guard (tests/process_guard.py): a test that starts a real
process without the `e2e` marker fails, whichever way it starts it."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # each test runs pytest in a subprocess
ROOT = Path(__file__).resolve().parents[1]

PROBES = '''
import multiprocessing
import os
import subprocess

import pytest


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "0.1"])
    yield proc
    proc.wait()


def test_runs_a_command():
    subprocess.run(["true"], check=True)


def test_starts_a_process_in_a_fixture(sleeper):
    pass


def test_forks():
    child = multiprocessing.get_context("fork").Process(target=os.getpid)
    child.start()
    child.join()


def test_spawns_a_python():
    child = multiprocessing.get_context("spawn").Process(target=os.getpid)
    child.start()
    child.join()


def test_uses_os_system():
    assert os.system("true") == 0


@pytest.mark.e2e
def test_marked_e2e_runs_a_command():
    subprocess.run(["true"], check=True)


def test_stays_in_process():
    assert sum(range(4)) == 6
'''


@pytest.fixture
def probes(pytester, monkeypatch):
    """A test module of probes, run by a pytest with the guard and without Django."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(test_probes=PROBES)
    pytester.makeini("[pytest]\nmarkers =\n    e2e: starts real processes\n")
    return pytester


def test_a_test_that_starts_a_process_fails_unless_it_is_marked_e2e(probes):
    result = probes.runpytest_subprocess("-p", "tests.process_guard", "-p", "no:django")
    result.assert_outcomes(passed=2, failed=4, errors=1)
    output = result.stdout.str()
    for name in ("runs_a_command", "forks", "spawns_a_python", "uses_os_system"):
        assert f"FAILED test_probes.py::test_{name} " in output
    assert "ERROR test_probes.py::test_starts_a_process_in_a_fixture " in output
    assert "started a real process in its setup but is not marked e2e" in output
    assert "subprocess.Popen: ['sleep', '0.1']" in output


def test_the_fast_lane_leaves_out_the_tests_marked_e2e(probes):
    result = probes.runpytest_subprocess(
        "-p", "tests.process_guard", "-p", "no:django", "-m", "not e2e", "-k", "marked or stays"
    )
    result.assert_outcomes(passed=1, deselected=6)
