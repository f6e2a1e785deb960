"""Login throttling (django-axes) on both login forms: after MISTUDIO_LOGIN_FAILURE_LIMIT wrong
passwords for one username from one address, that pair is locked out, even with the right
password, until the cool-off has passed; others are not."""
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.db.models import F
from django.test import Client

pytestmark = pytest.mark.django_db

PAGES = "/accounts/login/"
ADMIN = "/admin/login/"


def log_in(client, url, username, password, address="198.51.100.1"):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client):
    return "_auth_user_id" in client.session


def test_five_wrong_passwords_lock_the_pages_login_even_against_the_right_one(client, alice, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert log_in(client, PAGES, "alice", "wrong").status_code == 200  # the form again, with its error
    locked = log_in(client, PAGES, "alice", "wrong")
    assert locked.status_code == 429
    right = log_in(client, PAGES, "alice", "alice-password-1")
    assert right.status_code == 429 and not logged_in(client)
    page = right.content.decode()
    assert 'id="locked-out"' in page and "After 5 wrong passwords for alice" in page and "for 15 minutes" in page


def test_the_admin_login_is_locked_out_by_the_same_count(client, charlie):
    for _ in range(3):
        log_in(client, PAGES, "charlie", "wrong")
    for _ in range(2):
        log_in(client, ADMIN, "charlie", "wrong")
    assert log_in(client, ADMIN, "charlie", "charlie-password-1").status_code == 429
    assert not logged_in(client)


def test_the_lock_holds_one_username_from_one_address_only(client, alice, bob):
    for _ in range(5):
        log_in(client, PAGES, "alice", "wrong")
    bob_client, elsewhere = Client(), Client()
    assert log_in(bob_client, PAGES, "bob", "bob-password-1").status_code == 302 and logged_in(bob_client)
    assert log_in(elsewhere, PAGES, "alice", "alice-password-1", address="203.0.113.9").status_code == 302
    assert logged_in(elsewhere)


def test_a_success_clears_the_count_and_the_lock_ends_after_the_cool_off(client, alice):
    for _ in range(4):
        log_in(client, PAGES, "alice", "wrong")
    assert log_in(client, PAGES, "alice", "alice-password-1").status_code == 302
    client.logout()
    for _ in range(4):
        log_in(client, PAGES, "alice", "wrong")
    assert log_in(client, PAGES, "alice", "wrong").status_code == 429  # counted afresh: the fifth locks
    assert log_in(client, PAGES, "alice", "alice-password-1").status_code == 429
    # Fifteen minutes on (the attempts made that long ago), the right password works again.
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    assert log_in(client, PAGES, "alice", "alice-password-1").status_code == 302 and logged_in(client)


def test_behind_the_proxy_the_address_is_the_one_the_proxy_appended(client, alice, settings):
    settings.AXES_CLIENT_IP_CALLABLE = "mistudio.accounts.client_ip_behind_proxy"  # MISTUDIO_TRUST_X_FORWARDED_PROTO=1

    def via_proxy(password, forwarded_for):
        return client.post(PAGES, {"username": "alice", "password": password}, REMOTE_ADDR="127.0.0.1",
                           HTTP_X_FORWARDED_FOR=forwarded_for)

    for made_up in ("1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4", "5.5.5.5"):  # what the client claims changes
        via_proxy("wrong", f"{made_up}, 198.51.100.1")
    assert via_proxy("alice-password-1", "9.9.9.9, 198.51.100.1").status_code == 429
    assert via_proxy("alice-password-1", "203.0.113.9").status_code == 302  # another client, same proxy


def test_many_addresses_guessing_one_password_lock_that_username_everywhere(client, alice, bob, settings):
    settings.LOGIN_USERNAME_FAILURE_LIMIT = 8
    for address in ("198.51.100.1", "198.51.100.2"):
        for _ in range(4):  # under the pair's limit from each
            assert log_in(Client(), PAGES, "alice", "wrong", address=address).status_code == 200
    elsewhere = Client()
    locked = log_in(elsewhere, PAGES, "alice", "alice-password-1", address="203.0.113.9")
    assert locked.status_code == 429 and not logged_in(elsewhere)
    assert "locked from every address" in locked.content.decode()
    assert log_in(Client(), PAGES, "bob", "bob-password-1", address="203.0.113.9").status_code == 302
    AccessAttempt.objects.filter(username="alice").update(attempt_time=F("attempt_time") - timedelta(minutes=16))
    assert log_in(Client(), PAGES, "alice", "alice-password-1", address="203.0.113.9").status_code == 302
