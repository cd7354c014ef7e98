"""The AI assistant's overhead beyond the model's own time (p50 / p99).

The processing job of each message runs in this process (claim, the
"assistant" handler: guard-rail queries, history from the stored rows, prompt
rendering, the openai client's request, the run row, the reply queued and
the job committed) against the loopback OpenAI-compatible test server of the
tests, which answers every request after a fixed delay (`--model-ms`).
Overhead = job time - model delay x model calls. With `--two-stages` each
turn makes two calls (classifier + answer).

    .venv/bin/python bench/assistant.py --db sqlite
    .venv/bin/python bench/assistant.py --db postgres --two-stages
"""

import statistics
import time

from _setup import configure, machine, parser


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--chats", type=int, default=20)
    p.add_argument("--model-ms", type=float, default=200.0)
    p.add_argument("--two-stages", action="store_true")
    p.add_argument("--history", type=int, default=12)
    args = p.parse_args()
    import os

    os.environ["ASSISTANT_ALLOW_PRIVATE_ENDPOINTS"] = "1"  # the test model is on loopback
    label = configure(args.db, args.broker, debug=False)

    from assistant.models import AssistantConfig
    from companies.models import Company
    from tests.assistant.model_server import ModelServer, Reply, classification
    from whatsapp.models import ProcessingJob
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.services.processing import run_processing_job
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message

    server = ModelServer(delay=args.model_ms / 1000).start()
    company = Company.objects.create(name="Bench Salon", slug="bench", inbound_handler="assistant")
    config = AssistantConfig(
        company=company, base_url=server.url, model="bench-model",
        opening_hours="Mon-Fri 9-18", services="Haircut 30 EUR\nColouring 60 EUR",
        classifier_enabled=args.two_stages, history_messages=args.history,
        chat_replies_per_hour=0, monthly_token_budget=0, timeout_seconds=10,
    )
    config.set_api_key("sk-bench")
    config.save()
    calls = 2 if args.two_stages else 1

    overhead, total = [], []
    warmup = 5
    for i in range(args.messages + warmup):
        if args.two_stages:
            server.add(classification("answer"))
        server.add(Reply(f"Answer number {i}. We open at 9."))
        phone = f"49151{i % args.chats:08d}@s.whatsapp.net"
        event = message_event(f"BENCH{i:06d}", phone, f"question {i}", push_name="Bench")
        outcome = record_inbound_message(company.pk, normalize_message(event))
        job = ProcessingJob.objects.get(message_id=outcome.message_pk)
        started = time.perf_counter()
        status = run_processing_job(job.pk)
        took = (time.perf_counter() - started) * 1000
        assert status == ProcessingJob.Status.SUCCEEDED, status
        if i >= warmup:
            total.append(took)
            overhead.append(took - calls * args.model_ms)
    server.stop()
    from assistant.models import AssistantRun

    runs = list(AssistantRun.objects.order_by("pk").values_list(
        "total_ms", "classify_ms", "answer_ms"))[warmup:]
    client = [(c or 0) + a - calls * args.model_ms for _, c, a in runs]  # openai client + HTTP
    ours = [t - (c or 0) - a for t, c, a in runs]  # guard rails, history, prompt, run row
    pipeline = [job - t for job, (t, _, _) in zip(total, runs, strict=True)]  # claim, queue, commit

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]

    print(f"assistant overhead, {label}, {machine()}")
    print(f"{args.messages} turns in {args.chats} chats, history {args.history}, "
          f"{'two stages' if args.two_stages else 'one stage'}, model latency "
          f"{args.model_ms:g} ms per call")
    print(f"job time     p50 {pct(total, 50):.1f}  p99 {pct(total, 99):.1f}  ms")
    print(f"overhead     p50 {pct(overhead, 50):.1f}  p99 {pct(overhead, 99):.1f}  "
          f"max {max(overhead):.1f}  mean {statistics.mean(overhead):.1f}  ms")
    print(f"  of which: openai client + HTTP p50 {pct(client, 50):.0f}  p99 {pct(client, 99):.0f}"
          f" | assistant (guard rails, history, prompt, run row) p50 {pct(ours, 50):.0f}  "
          f"p99 {pct(ours, 99):.0f} | job (claim, reply queued, commit) "
          f"p50 {pct(pipeline, 50):.0f}  p99 {pct(pipeline, 99):.0f}  ms")
    print(f"measured {len(overhead)} turns")


if __name__ == "__main__":
    main()
