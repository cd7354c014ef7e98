"""A separate process delivering the same WhatsApp event several times.

    python -m tests.whatsapp.inbound_deliverer COMPANY_ID MESSAGE_ID COPIES START_AT

Waits until the wall clock reaches START_AT (so two of these race), records
the event COPIES times and prints the outcomes as one JSON line. Run with the
test database in the environment (tests/e2e_processes.py db_env).
"""

import json
import sys
import time


def main(company_id, message_id, copies, start_at):
    import django

    django.setup()
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message

    data = message_event(message_id, "491701234567@s.whatsapp.net", "race").SerializeToString()
    time.sleep(max(0.0, start_at - time.time()))
    outcomes = [
        record_inbound_message(company_id, normalize_message(data)).status for _ in range(copies)
    ]
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
