"""Request rates per user (DRF throttles): a burst and a sustained rate on every API call, and a
stricter one on the calls that cost the server real work (a job or a sweep made, a model checked,
a corpus uploaded), and on the pages' forms that do the same. Counts live in Django's cache: per process with the embedded default
(locmem), shared by every web process with Redis (REDIS_URL)."""
import math
from functools import wraps
from types import SimpleNamespace

from django.shortcuts import render
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


def throttled_page(view_function):
    """A page that does what an expensive API call does (the New job and New sweep forms, an upload)
    counts a POST against the same rates, in the same counts, as the API: the form is no way around
    them. Past one, a 429 page that says when to try again."""

    @wraps(view_function)
    def page(request, *args, **kwargs):
        if request.method == "POST":
            view = SimpleNamespace(throttle_scope="expensive")
            throttles = (BurstRateThrottle(), SustainedRateThrottle(), ExpensiveRateThrottle())
            waits = [throttle.wait() for throttle in throttles if not throttle.allow_request(request, view)]
            if waits:
                wait_s = math.ceil(max((wait for wait in waits if wait is not None), default=60))
                response = render(request, "throttled.html", {"wait_s": wait_s}, status=429)
                response["Retry-After"] = str(wait_s)
                return response
        return view_function(request, *args, **kwargs)

    return page
