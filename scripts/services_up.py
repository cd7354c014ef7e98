"""Exit 0 when PostgreSQL and Redis answer at the given URLs (used by scripts/test)."""

import sys

import psycopg
import redis


def main(pg_url, redis_url):
    try:
        conninfo = pg_url.replace("postgres://", "postgresql://", 1)
        psycopg.connect(conninfo, connect_timeout=3).close()
        redis.Redis.from_url(redis_url, socket_timeout=3).ping()
    except Exception as exc:
        print(f"services not reachable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
