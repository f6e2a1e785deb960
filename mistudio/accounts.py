"""Users and their API tokens: the one path the CLI, the demo and the tests take."""
from axes.backends import AxesStandaloneBackend
from django.conf import settings
from django.contrib.auth import get_user_model
from knox.models import AuthToken


def user_issue_token(*, username: str, staff: bool = False):
    """Create the user if needed and return (user, token). Only a hash of the token is stored,
    so each call makes a new token; earlier ones keep working until deleted in the admin."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
    if staff:
        user.is_staff = True
    user.save()
    _, token = AuthToken.objects.create(user=user)
    return user, token


def tokens_of(user) -> list:
    """The user's API tokens that still work, newest first (an expired one is deleted when next
    presented; it is not listed)."""
    from django.db.models import Q
    from django.utils import timezone

    return list(AuthToken.objects.filter(user=user).filter(Q(expiry__isnull=True) | Q(expiry__gt=timezone.now()))
                .order_by("-created"))


def token_revoke(*, user, token_key: str) -> None:
    """Delete one of the user's own tokens, named by its key (the first characters of the token,
    which authenticate nothing); another user's, or none, is a 404."""
    from mistudio.errors import NotFound

    deleted, _ = AuthToken.objects.filter(user=user, token_key=token_key).delete()
    if not deleted:
        raise NotFound(f"You have no API token {token_key!r}: GET /api/v1/tokens lists yours")


def client_ip_behind_proxy(request):
    """The client's address as the trusted proxy saw it: the last entry of X-Forwarded-For, the one
    the proxy appended (nginx's $proxy_add_x_forwarded_for); entries before it come from the client
    and prove nothing. Without the header, the peer's address."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    last = forwarded.rsplit(",", 1)[-1].strip()
    return last or request.META.get("REMOTE_ADDR")


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' lockout check, first of the authentication backends, for every login that comes
    with its request: both login forms, the only ways in with a password from the network. A call
    without one (the test client's login(), a script on the machine) has no address to count by and
    goes on to the password check, as with Django's own backends."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        if username and failures_everywhere(username) >= settings.LOGIN_USERNAME_FAILURE_LIMIT:
            # Guessing one user's password from many addresses: locked whatever the address, as
            # axes locks a (username, address) pair; the lockout page says which.
            from axes.exceptions import AxesBackendPermissionDenied

            request.axes_locked_out = True
            request.login_locked_everywhere = True
            raise AxesBackendPermissionDenied(f"{username!r} is locked out from every address")
        return super().authenticate(request, username=username, password=password, **kwargs)


def failures_everywhere(username: str) -> int:
    """Wrong passwords for `username` from every address within the cool-off."""
    from axes.models import AccessAttempt
    from django.db.models import Sum
    from django.utils import timezone

    recent = AccessAttempt.objects.filter(username=username, attempt_time__gte=timezone.now() - settings.AXES_COOLOFF_TIME)
    return recent.aggregate(total=Sum("failures_since_start"))["total"] or 0
