"""The benchmarks run end to end, on small numbers.

They start real processes (qcluster, runworker, the WhatsApp simulator) on a
database of their own. Nothing about speed is asserted (figures are printed,
see docs/benchmarks.md); what is checked is that every command still works
and measures every message and every session it was given. The SQLite pass
runs them on the embedded default, the PostgreSQL pass on PostgreSQL + Redis.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script, *args):
    env = dict(os.environ)
    database_url = env.get("DATABASE_URL", "")
    if database_url.startswith(("postgres://", "postgresql://")):
        env["BENCH_PG_URL"] = database_url
        env["BENCH_REDIS_URL"] = env["REDIS_URL"]
        args = (*args, "--db", "postgres", "--broker", "redis")
    else:
        args = (*args, "--db", "sqlite")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return done.stdout


def figures(line):
    return [float(x) for x in re.findall(r"\d+\.\d+", line)]


def line_starting(out, prefix):
    lines = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{out}"
    return lines[0]


def test_latency_benchmark_times_every_message_from_event_to_handler_start():
    out = run_bench("latency.py", "-n", "12", "--rate", "20", "--idle", "1")
    assert "12 messages at 20/s" in out
    p50, p90, p99, worst = figures(line_starting(out, "event -> handler start"))
    assert 0 < p50 <= p90 <= p99 <= worst
    # The split adds up: recording and queueing are both part of the total.
    commit_p50 = figures(line_starting(out, "  event -> committed"))[0]
    assert commit_p50 <= worst


def test_sessions_per_worker_benchmark_connects_every_session_through_the_simulator():
    out = run_bench(
        "sessions_per_worker.py", "--transport", "simulator", "-n", "8", "--settle", "2"
    )
    assert "DIED" not in out, out
    assert re.search(r"^all connected: +\d+\.\d s$", out, re.M), out
    assert "'owned': 8, 'connected': 8" in out
    assert "leases released" in out and "9 of 9 leases released" in out


def test_failover_benchmark_sees_every_session_owned_and_connected_again_after_kill_and_term():
    out = run_bench(
        "failover.py", "--transport", "simulator", "-n", "4", "--ttl", "3", "--interval", "1"
    )
    kill = line_starting(out, "SIGKILL of A -> B")
    term = line_starting(out, "SIGTERM of B -> C")
    assert "never" not in kill and "never" not in term, out
    first_owned, all_owned, all_connected, _expiry = figures(kill)
    assert 0 < first_owned <= all_owned <= all_connected
    # B saw A's process gone and freed A's 4 leases itself (a SIGKILLed worker
    # records nothing); after SIGTERM B released its own.
    after_kill = out[out.index(kill) : out.index(term)]
    assert re.search(r"old worker: 4 leases released between", after_kill), out
    assert re.search(r"old worker: 4 leases released between", out[out.index(term) :]), out


def test_inbound_throughput_benchmark_records_every_message_on_both_paths():
    out = run_bench("inbound_throughput.py", "-n", "120", "--rounds", "2", "--sessions", "12")
    # The script itself checks that every message of both paths was stored.
    assert "120 messages, one process, 2 interleaved rounds" in out
    grouped = line_starting(out, "inbound path, worker group commit (12 sessions)")
    transactions = int(re.search(r"(\d+) transactions", grouped).group(1))
    assert 0 < transactions < 120  # messages shared commits


def test_end_to_end_benchmark_answers_every_message_the_phones_sent():
    out = run_bench("end_to_end.py", "-n", "30", "--rates", "5,10", "--seconds", "2")
    for stage in ("inbound only (stored)", "job stage (jobs finished)", "end to end (replies"):
        rate = figures(line_starting(out, f"burst of 30: {stage}"))[0]
        assert rate > 0
    steady = re.findall(r"^ +(\d+)/s +(\d+) +(\d+) +\d+\.\d+ ", out, re.M)
    assert steady == [("5", "10", "10"), ("10", "20", "20")], out  # every message answered


def test_neonize_churn_benchmark_starts_and_stops_real_clients_without_a_worker_death():
    postgres = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    store = ("--store", "postgres") if postgres else ()
    out = run_bench(
        "neonize_churn.py", "-n", "20", "--duration", "15", "--flips", "2",
        "--backoff-cap", "2", *store,
    )  # fmt: skip
    assert "worker deaths: 0" in out, out
    made = re.search(r"connect attempts: (\d+); companies tried: (\d+) of 20", out)
    assert made and int(made.group(1)) >= 20 and int(made.group(2)) >= 10, out
    assert len(re.findall(r"\d+", line_starting(out, "worker RSS by quarter"))) == 4, out
    if postgres:
        # The worker owns 20 sessions: its store connections never exceed them.
        peak = int(re.search(r"store database connections: peak (\d+)", out).group(1))
        assert 0 < peak <= 20, out


def test_assistant_benchmark_measures_every_turn_against_the_test_model():
    out = run_bench("assistant.py", "--messages", "6", "--model-ms", "20", "--two-stages")
    assert "measured 6 turns" in out and "two stages" in out
    p50, p99 = figures(line_starting(out, "job time"))[:2]
    assert 40 <= p50 <= p99  # two model calls of 20 ms each, at least


def test_neonize_boot_benchmark_starts_real_clients_in_process_and_in_shards():
    inside = run_bench("neonize_boot.py", "-n", "6")
    assert inside.count("every client began its dial") == 2, inside
    assert inside.count("ended by {'dial': 6}") == 2, inside  # every hold ended on the dial line
    assert inside.count("events seen: 6") == 2, inside
    sharded = run_bench("neonize_boot.py", "-n", "6", "--shards", "2")
    assert sharded.count("every client began its dial") == 2, sharded
    assert sharded.count("events seen: 6") == 2, sharded
