"""django-q2's ORM broker, cheaper per task (Q_CLUSTER["broker_class"]).

The stock ORM broker costs more per task than our whole job does once the
cluster is busy (measured with py-spy, docs/benchmarks.md): its single pusher
process SELECTs one task, then UPDATEs its lock, every one through the ORM
(query compilation) after `close_old_connections()`; the monitor deletes each
acknowledged task through the ORM's deletion collector (a transaction and a
SELECT first). The pusher is one process, so that cost capped the whole
cluster (~50 tasks/s on SQLite with the pusher at 90% of a core). Here:

* `enqueue`: the same row (key, payload, lock) with one plain INSERT on the
  same database alias; being a row in the caller's transaction, the enqueue
  stays transactional exactly as before.
* `dequeue`: up to Q_CLUSTER["bulk"] tasks taken with ONE conditional
  `UPDATE ... RETURNING` (lock moved to now + retry, only where it is still
  in the past: of two clusters racing for a task only one gets it, as with
  the stock broker's per-task UPDATE). PostgreSQL skips rows another cluster
  is locking instead of waiting for them.
* `acknowledge` / `delete`: one plain DELETE.

Everything else (lock timeout, re-delivery after `retry`, the admin's view of
the queue) is django-q2's own.
"""

from time import sleep

from django import db
from django.db import connections, transaction
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.conf import Conf
from django_q.models import OrmQ


class ORMBroker(ORM):
    _sql = {}

    @staticmethod
    def _connection():
        if transaction.get_autocommit(using=Conf.ORM):
            db.close_old_connections()  # as the stock broker does outside a transaction
        return connections[Conf.ORM]

    @classmethod
    def _statement(cls, name, connection):
        sql = cls._sql.get(name)
        if sql is None:
            q = connection.ops.quote_name
            meta = OrmQ._meta
            table, pk = q(meta.db_table), q(meta.pk.column)
            key, payload, lock = (q(meta.get_field(f).column) for f in ("key", "payload", "lock"))
            skip = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
            sql = cls._sql[name] = {
                "enqueue": f"INSERT INTO {table} ({key}, {payload}, {lock}) "
                f"VALUES (%s, %s, %s) RETURNING {pk}",
                "dequeue": f"UPDATE {table} SET {lock} = %s WHERE {pk} IN "
                f"(SELECT {pk} FROM {table} WHERE {key} = %s AND {lock} < %s "
                f"ORDER BY {pk} LIMIT %s{skip}) AND {lock} < %s "
                f"RETURNING {pk}, {payload}",
                "delete": f"DELETE FROM {table} WHERE {pk} = %s",
            }[name]
        return sql

    def enqueue(self, task):
        connection = self._connection()
        lock = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                self._statement("enqueue", connection),
                [self.list_key or Conf.CLUSTER_NAME, task, lock],
            )
            return cursor.fetchone()[0]

    def dequeue(self):
        connection = self._connection()
        now = timezone.now()
        adapt = connection.ops.adapt_datetimefield_value
        with connection.cursor() as cursor:
            cursor.execute(
                self._statement("dequeue", connection),
                [adapt(self.timeout(None)), self.list_key, adapt(now), Conf.BULK, adapt(now)],
            )
            tasks = sorted(cursor.fetchall())
        if tasks:
            return tasks
        sleep(Conf.POLL)  # empty queue, spare the cpu

    def delete(self, task_id):
        connection = self._connection()
        with connection.cursor() as cursor:
            cursor.execute(self._statement("delete", connection), [task_id])

    def acknowledge(self, task_id):
        return self.delete(task_id)
