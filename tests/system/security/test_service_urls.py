"""DATABASE_URL and REDIS_URL choose the database and the queue's broker; a URL miStudio cannot use
stops start-up saying what to write instead. Each case is a real `manage.py` process."""
import pytest

from tests.system.security.test_production_settings import manage

BROKER = "from django.conf import settings as s; print(sorted(k for k in ('orm', 'redis') if k in s.Q_CLUSTER))"


@pytest.mark.parametrize("url,advice", [
    ("mysql://user@db.example.org/mistudio", "or postgres://USER:PASSWORD@HOST:5432/NAME"),
    ("db.sqlite3", "use sqlite:////absolute/path/db.sqlite3"),
    ("postgres://db.example.org", "names no database"),
])
def test_a_database_url_it_cannot_use_stops_start_up_saying_what_to_use(tmp_path, url, advice):
    done = manage(tmp_path, "check", MISTUDIO_DEBUG="1", DATABASE_URL=url)
    assert done.returncode != 0
    assert done.stderr.startswith(f"manage.py: DATABASE_URL={url!r}") and "Traceback" not in done.stderr
    assert advice in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("url", ["127.0.0.1:6379", "http://127.0.0.1:6379", "redis://127.0.0.1:6379/queue", "redis://"])
def test_a_malformed_redis_url_stops_start_up_saying_what_to_use(tmp_path, url):
    done = manage(tmp_path, "check", MISTUDIO_DEBUG="1", REDIS_URL=url)
    assert done.returncode != 0
    assert done.stderr.startswith(f"manage.py: REDIS_URL={url!r}") and "Traceback" not in done.stderr
    assert "redis://HOST:6379/0" in done.stderr


@pytest.mark.slow
def test_the_queue_is_in_the_database_unless_redis_url_names_a_redis(tmp_path):
    database = manage(tmp_path, "shell", "-c", BROKER, MISTUDIO_DEBUG="1", REDIS_URL="")
    redis = manage(tmp_path, "shell", "-c", BROKER, MISTUDIO_DEBUG="1", REDIS_URL="redis://10.0.0.5:6379/2")
    assert database.stdout.split("\n")[-2] == "['orm']", database.stderr
    assert redis.stdout.split("\n")[-2] == "['redis']", redis.stderr


@pytest.mark.slow
def test_postgresql_test_runs_each_get_their_own_test_database(tmp_path):
    code = "from django.conf import settings as s; print(s.DATABASES['default']['TEST']['NAME'])"
    url = "postgres://postgres@127.0.0.1:5432/mistudio"
    first = manage(tmp_path, "shell", "-c", code, MISTUDIO_DEBUG="1", DATABASE_URL=url)
    second = manage(tmp_path, "shell", "-c", code, MISTUDIO_DEBUG="1", DATABASE_URL=url)
    names = first.stdout.split("\n")[-2], second.stdout.split("\n")[-2]
    assert all(name.startswith("test_mistudio_") for name in names), (first.stderr, second.stderr)
    assert names[0] != names[1]


@pytest.mark.parametrize("url", [
    "sqlite:////srv/mistudio/db.sqlite3",
    "postgres://mistudio:p%40ss%2Fw%3Ard@db.example.org:5433/mistudio?sslmode=require",
    "postgres://postgres@%2Fvar%2Frun%2Fpostgresql/mistudio",  # a socket folder
])
def test_the_database_url_a_process_hands_its_children_names_the_database_it_uses(url):
    """DDP ranks and a test's worker get DATABASE_URL built back from the parent's settings."""
    from mistudio.database import database_settings, database_url

    settings_dict = database_settings(url)
    assert database_settings(database_url(settings_dict)) == settings_dict
