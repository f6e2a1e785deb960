"""Users and their API tokens: the one path the CLI, the demo and the tests take."""
from axes.backends import AxesStandaloneBackend
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
        return super().authenticate(request, username=username, password=password, **kwargs)
