"""Request rates per user (DRF throttles): a burst and a sustained rate on every API call, and a
stricter one on the calls that cost the server real work (a job or a sweep made, a model checked,
a corpus uploaded). Counts live in Django's cache: per process with the embedded default
(locmem), shared by every web process with Redis (REDIS_URL)."""
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle, UserRateThrottle


class _RateFromSettings:
    """DRF binds the rates when its throttle module is imported; read them at each request instead,
    so that a test (or an operator's override) that changes REST_FRAMEWORK is obeyed."""

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]


class BurstRateThrottle(_RateFromSettings, UserRateThrottle):
    scope = "burst"


class SustainedRateThrottle(_RateFromSettings, UserRateThrottle):
    scope = "sustained"


class ExpensiveRateThrottle(_RateFromSettings, ScopedRateThrottle):
    """Counts the calls of views whose `throttle_scope` is "expensive", on top of the two above."""
