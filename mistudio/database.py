"""DATABASE_URL both ways: the settings a URL gives Django, and the URL of the database a process
uses, for the processes it starts (DDP ranks, a test's worker) to use the very same one.

Settings call this before Django is configured, so nothing here reads django.conf.settings.
"""
from urllib.parse import quote, urlencode

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


def database_settings(url: str) -> dict:
    """The embedded SQLite file, or PostgreSQL for several hosts; anything else is refused at start-up
    rather than met later as a half-working backend."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme not in ("sqlite", "postgres", "postgresql", "pgsql"):
        raise ImproperlyConfigured(
            f"DATABASE_URL={url!r} is neither SQLite nor PostgreSQL: use sqlite:////absolute/path/db.sqlite3 "
            "or postgres://USER:PASSWORD@HOST:5432/NAME"
        )
    database = dj_database_url.parse(url, conn_max_age=0)
    if not database["NAME"]:
        raise ImproperlyConfigured(f"DATABASE_URL={url!r} names no database (the path after the host)")
    return database


def database_url(settings_dict: dict) -> str:
    """The URL of a database as Django's settings describe it (connection.settings_dict), on SQLite
    or PostgreSQL alike."""
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings_dict['NAME']}"
    user = quote(settings_dict["USER"] or "", safe="")
    if settings_dict["PASSWORD"]:
        user += ":" + quote(settings_dict["PASSWORD"], safe="")
    host = quote(settings_dict["HOST"] or "", safe="")  # a socket folder has slashes
    port = f":{settings_dict['PORT']}" if settings_dict["PORT"] else ""
    options = f"?{urlencode(settings_dict['OPTIONS'])}" if settings_dict.get("OPTIONS") else ""
    return f"postgres://{user}@{host}{port}/{quote(settings_dict['NAME'], safe='')}{options}"
