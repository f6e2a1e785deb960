"""django-q2's Redis broker, with every key it writes under `settings.QUEUE_PREFIX`.

Queues keep their names ("mistudio", "mistudio-gpu0"), so the routing is the same on both brokers;
only the Redis keys move (`<prefix>:django_q:mistudio-gpu0:q`), which lets several sites or test
runs share one Redis without taking each other's tasks. With no prefix the keys are django-q2's own.

BROKER_ERRORS are what a broker raises when it cannot take a task (the database of the ORM broker,
a Redis that is down or unreachable): enqueueing catches them and leaves the job queued for the
watchdog to hand over again (training.services.job_enqueue).
"""
import redis
from django.conf import settings
from django.db import DatabaseError
from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf

BROKER_ERRORS = (DatabaseError, redis.RedisError, OSError)
# A Redis host that drops packets would otherwise hold a submission for the kernel's TCP connect
# timeout (about two minutes), long enough for a client to give up and submit the job again.
CONNECT_TIMEOUT_S = 5


def _prefixed(key: str) -> str:
    return f"{settings.QUEUE_PREFIX}:{key}" if settings.QUEUE_PREFIX else key


class PrefixedRedis(Redis):
    def __init__(self, list_key: str = None):
        super().__init__(list_key=list_key)
        self.list_key = _prefixed(self.list_key)

    @staticmethod
    def get_connection(list_key: str = None) -> redis.Redis:
        if isinstance(Conf.REDIS, str):
            return redis.from_url(Conf.REDIS, socket_connect_timeout=CONNECT_TIMEOUT_S)
        return Redis.get_connection(list_key)

    def set_stat(self, key: str, value: str, timeout: int):
        super().set_stat(_prefixed(key), value, timeout)

    def get_stat(self, key: str):
        return super().get_stat(_prefixed(key))

    def get_stats(self, pattern: str):
        return super().get_stats(_prefixed(pattern))
