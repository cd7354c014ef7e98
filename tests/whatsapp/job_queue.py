"""What is waiting on django-q2's queue, for either broker.

ORM broker: rows of OrmQ under this cluster's key. Redis broker: the entries
of the cluster's Redis list. Payloads are decoded with django-q2's own
SignedPackage, so tests see the task function and its arguments.
"""

from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.signing import SignedPackage


def queued_tasks():
    """Decoded tasks currently on the queue (oldest first)."""
    broker = get_broker()
    if isinstance(broker, ORM):
        payloads = list(
            broker.get_connection()
            .filter(key=broker.list_key)
            .order_by("id")
            .values_list("payload", flat=True)
        )
    else:
        payloads = broker.connection.lrange(broker.list_key, 0, -1)
    return [SignedPackage.loads(p) for p in payloads]


def inbound_tasks():
    """(func, args) of the queued inbound processing tasks."""
    return [
        (t["func"], tuple(t["args"]))
        for t in queued_tasks()
        if t["func"].startswith("whatsapp.tasks.process_")
    ]


def purge():
    get_broker().purge_queue()
