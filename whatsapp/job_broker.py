"""django-q2's ORM broker with a cheaper enqueue (Q_CLUSTER["broker_class"]).

The stock `ORM.enqueue` creates an OrmQ model instance per task: query
compilation and, outside a transaction, `close_old_connections()` on every
call. On the inbound hot path that was the largest single cost after the
message INSERT itself (bench/inbound_throughput.py, docs/benchmarks.md). This
subclass writes the same row (key, payload, lock) with one plain INSERT on the
same database alias; dequeue, acknowledgement and everything else are
django-q2's own. Being a row in the caller's transaction, the enqueue stays
transactional exactly as before.
"""

from django import db
from django.db import connections, transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ


class ORMBroker(ORM):
    _sql = None

    def enqueue(self, task):
        connection = connections[Conf.ORM]
        if self._sql is None:
            q = connection.ops.quote_name
            meta = OrmQ._meta
            columns = ", ".join(q(meta.get_field(f).column) for f in ("key", "payload", "lock"))
            type(self)._sql = (
                f"INSERT INTO {q(meta.db_table)} ({columns}) VALUES (%s, %s, %s) RETURNING "
                f"{q(meta.pk.column)}"
            )
        if transaction.get_autocommit(using=Conf.ORM):
            db.close_old_connections()  # as the stock broker does outside a transaction
        lock = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(self._sql, [self.list_key or Conf.CLUSTER_NAME, task, lock])
            return cursor.fetchone()[0]
