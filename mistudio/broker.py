"""django-q2's Redis broker, with every key it writes under `settings.QUEUE_PREFIX`.

Queues keep their names ("mistudio", "mistudio-gpu0"), so the routing is the same on both brokers;
only the Redis keys move (`<prefix>:django_q:mistudio-gpu0:q`), which lets several sites or test
runs share one Redis without taking each other's tasks. With no prefix the keys are django-q2's own.
"""
from django.conf import settings
from django_q.brokers.redis_broker import Redis


def _prefixed(key: str) -> str:
    return f"{settings.QUEUE_PREFIX}:{key}" if settings.QUEUE_PREFIX else key


class PrefixedRedis(Redis):
    def __init__(self, list_key: str = None):
        super().__init__(list_key=list_key)
        self.list_key = _prefixed(self.list_key)

    def set_stat(self, key: str, value: str, timeout: int):
        super().set_stat(_prefixed(key), value, timeout)

    def get_stat(self, key: str):
        return super().get_stat(_prefixed(key))

    def get_stats(self, pattern: str):
        return super().get_stats(_prefixed(pattern))
