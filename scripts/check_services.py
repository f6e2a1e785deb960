"""Check that the PostgreSQL and Redis named by DATABASE_URL and REDIS_URL answer, creating the
PostgreSQL database when it is missing. `make test-scaleout` runs it first, so an unreachable
service is one clear line instead of a suite of connection errors.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mistudio REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python scripts/check_services.py
"""
import os
import sys
from pathlib import Path

import psycopg
import redis
from django.core.exceptions import ImproperlyConfigured
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository's packages

from mistudio.database import database_settings  # noqa: E402


def fail(message):
    print(f"check_services: {message}", file=sys.stderr)
    sys.exit(1)


def ensure_database(url):
    try:
        database = database_settings(url)
    except ImproperlyConfigured as error:
        fail(str(error))
    if database["ENGINE"] != "django.db.backends.postgresql":
        fail(f"DATABASE_URL={url!r} is not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:5432/NAME)")
    where = f"{database['HOST'] or 'the local socket'}:{database['PORT'] or 5432}"
    params = dict(host=database["HOST"] or None, port=database["PORT"] or None, user=database["USER"] or None,
                  password=database["PASSWORD"] or None, dbname="postgres", connect_timeout=5,
                  **database.get("OPTIONS", {}))
    try:
        with psycopg.connect(**params, autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database["NAME"]]).fetchone()
            if not exists:
                # CREATE DATABASE takes no parameters: quote the name as an identifier.
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database["NAME"])))
                print(f"check_services: created database {database['NAME']!r} on {where}")
    except psycopg.Error as error:
        fail(f"PostgreSQL at {where} (user {database['USER'] or '(default)'}) is not usable: "
             f"{str(error).strip().rstrip('.')}. Start it, or point DATABASE_URL at one that runs.")
    print(f"check_services: PostgreSQL {where}/{database['NAME']} ok")


def check_redis(url):
    try:
        redis.from_url(url, socket_connect_timeout=5).ping()
    except (redis.RedisError, ValueError) as error:
        fail(f"Redis at {url} does not answer: {str(error).rstrip('.')}. Start it, or point REDIS_URL at one that runs.")
    print(f"check_services: Redis {url} ok")


if __name__ == "__main__":
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            fail(f"set {name}")
    ensure_database(os.environ["DATABASE_URL"])
    check_redis(os.environ["REDIS_URL"])
