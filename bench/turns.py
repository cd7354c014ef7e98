"""Turns: chats writing in bursts -> one answer per burst, in order, on time.

Real processes: the WhatsApp simulator (devices already paired), one
`runworker whatsapp`, `manage.py runcluster` (the job stage) and `manage.py
runturns` (the turn runner). Every company's handler thinks for a fixed time
(bench/turn_handler.py, default 2 s) and answers with the burst's last message.

--chats phones each write --rounds bursts of --burst messages (sent within
~0.3 s); a new round starts every --gap seconds, shorter than debounce + think
by default, so a burst often arrives while the chat's previous turn is still
being handled (its turn must wait: strictly in order). Printed:

* replies per burst (must be exactly 1) and bursts answered in full (the turn
  held every message of the burst);
* order violations: a chat whose reply to round r came after its reply to r+1;
* turn latency beyond the think time: from the burst's last message sent to
  the reply acknowledged by the simulator, minus the think time; p50/p99/max
  (target: p99 under debounce + 1 s).

    .venv/bin/python bench/turns.py --db sqlite
    .venv/bin/python bench/turns.py --db postgres --broker redis
"""

import json
import os
import tempfile
import time
import urllib.request
from collections import defaultdict

from _setup import configure, machine, parser

HANDLER = "bench_think"


def main():
    p = parser(__doc__)
    p.add_argument("--chats", type=int, default=200)
    p.add_argument("--companies", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--burst", type=int, default=3, help="messages per burst")
    p.add_argument("--gap", type=float, default=3.0, help="seconds between rounds")
    p.add_argument("--think", type=float, default=2.0, help="handler think time, seconds")
    p.add_argument("--turn-workers", type=int, default=256, help="turn runner threads")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    os.environ["BENCH_THINK_SECONDS"] = str(args.think)
    os.environ["TURN_WORKERS"] = str(args.turn_workers)
    os.environ["WHATSAPP_EXTRA_INBOUND_HANDLERS"] = json.dumps(
        {HANDLER: {"path": "bench.turn_handler.think", "label": "Turn benchmark"}}
    )
    label = configure(args.db, args.broker, debug=False)

    from _procs import Child, child_env, percentile
    from _simulator import Simulator
    from _workers import counts, make_companies, start_worker, wait_registered, worker_env
    from django.core.management import call_command

    from companies.models import Company
    from whatsapp.models import Turn

    ids = make_companies(args.companies, "turns")
    Company.objects.filter(pk__in=ids).update(inbound_handler=HANDLER, typing_seconds_per_char=0)
    debounce = Company.objects.get(pk=ids[0]).turn_debounce_seconds
    with open(os.devnull, "w") as quiet:
        call_command("setup_defaults", stdout=quiet)
    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-turns-")
    sim = worker = cluster = turns = None
    phones = [f"+4917{2000000 + i:07d}" for i in range(args.chats)]
    company_of = {phone: ids[i % len(ids)] for i, phone in enumerate(phones)}
    last_sent = {}  # (phone digits, round) -> time the burst's last message was sent

    def sim_call(path, body=None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{sim.port}/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def send_round(r):
        for k in range(1, args.burst + 1):
            per = defaultdict(list)
            for phone in phones:
                per[company_of[phone]].append(
                    {"from": phone, "text": f"{phone[1:]}:{r}:{k}", "push_name": "c"}
                )
            now = time.time()
            for company_id, items in per.items():
                sim_call("control/messages", {"company": company_id, "messages": items})
            if k == args.burst:
                for phone in phones:
                    last_sent[(phone[1:], r)] = now
            time.sleep(0.15)

    def replies():
        rows = []
        for company_id in ids:
            rows += sim_call(f"sends?company={company_id}")["sends"]
        return rows

    def wait(predicate, what):
        deadline = time.monotonic() + args.timeout
        while not predicate():
            for child in (worker, cluster, turns):
                if child is not None and not child.alive():
                    raise SystemExit(f"{child.name} exited waiting for {what}:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.2)

    expected = args.chats * args.rounds
    try:
        sim = Simulator(log_dir, f"{log_dir}/store")
        sim.provision(ids)
        sim.start()
        env = worker_env("simulator", f"{log_dir}/store", **sim.worker_settings())
        worker = start_worker("turns", env, log_dir)
        wait_registered("turns", worker)
        wait(lambda: counts("turns")["connected"] == len(ids), "every session connected")
        cluster = Child("runcluster", ["runcluster"], child_env(), log_dir)
        turns = Child("runturns", ["runturns"], child_env(), log_dir)
        # Warm-up: one message answered end to end before the phones write
        # (the clusters' start-up is not the pipeline's latency).
        sim_call(
            "control/messages",
            {"company": ids[0], "messages": [{"from": "+4917999999", "text": "warm:0:1"}]},
        )
        wait(lambda: Turn.objects.filter(status=Turn.Status.ANSWERED).exists(), "warm-up")
        warm = len(replies())
        began = time.monotonic()
        for r in range(args.rounds):
            if r:
                time.sleep(max(0.0, began + r * args.gap - time.monotonic()))
            send_round(r)
        wait(lambda: len(replies()) >= expected + warm, f"{expected} replies")
        time.sleep(max(3.0, debounce + args.think))  # anything extra would show now
        got = [r for r in replies() if not r["text"].startswith("re warm:")]
    finally:
        for child in (turns, cluster, worker):
            if child is not None:
                child.stop()
        if sim is not None:
            sim.stop()

    per_burst = defaultdict(list)  # (phone, round) -> [(at, n)]
    other = [row["text"] for row in got if not row["text"].startswith("re ")]
    for row in got:
        if not row["text"].startswith("re "):
            continue
        phone, r, _k = row["text"].removeprefix("re ").split(" ")[0].split(":")
        n = int(row["text"].rsplit("n=", 1)[1])
        per_burst[(phone, int(r))].append((row["at"], n, int(_k)))
    counts_per_burst = [
        len(per_burst.get((ph[1:], r), [])) for ph in phones for r in range(args.rounds)
    ]
    full = sum(1 for v in per_burst.values() if len(v) == 1 and v[0][2] == args.burst)
    violations = 0
    for ph in phones:
        times = [
            min(a for a, *_ in per_burst[(ph[1:], r)])
            for r in range(args.rounds)
            if per_burst.get((ph[1:], r))
        ]
        violations += sum(1 for a, b in zip(times, times[1:], strict=False) if b < a)
    beyond = [
        (min(a for a, *_ in v) - last_sent[key] - args.think) * 1000
        for key, v in per_burst.items()
        if key in last_sent
    ]
    statuses = dict((s, Turn.objects.filter(status=s).count()) for s in Turn.Status.values)
    if os.environ.get("BENCH_DEBUG"):
        from whatsapp.models import InboundMessage

        times = sorted(
            (m.received_at.timestamp(), m.text)
            for m in InboundMessage.objects.exclude(text__startswith="warm")
        )
        print("stored from", times[0][0] - min(last_sent.values()), "to",
              times[-1][0] - min(last_sent.values()), "s after the last burst message sent")
        for row in Turn.objects.order_by("pk").values_list(
            "pk", "chat_jid", "message_count", "first_message_at", "due_at", "started_at",
            "status", "result"
        )[:20]:
            print(row)
        print(log_dir)
    print(f"machine: {machine()}")
    print(
        f"database: {label}; companies: {len(ids)}; chats: {args.chats}; rounds: {args.rounds} "
        f"of {args.burst} messages every {args.gap:g} s; debounce {debounce:g} s; "
        f"think {args.think:g} s; turn runner threads: {args.turn_workers}"
    )
    print(
        f"bursts: {expected}; replies: {len(got)}; turns: "
        + ", ".join(f"{k} {v}" for k, v in statuses.items() if v)
    )
    print(
        f"replies per burst: min {min(counts_per_burst)} max {max(counts_per_burst)}; "
        f"bursts answered once and in full: {full} of {expected}"
    )
    print(f"order violations: {violations}; other messages (holding): {len(other)}")
    print(
        "turn latency beyond think time (last message sent -> reply acked, ms): "
        f"p50 {percentile(beyond, 50):.1f} p99 {percentile(beyond, 99):.1f} "
        f"max {max(beyond):.1f}"
    )


if __name__ == "__main__":
    main()
