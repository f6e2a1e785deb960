"""API tokens expire (30 days by default) and a user lists and revokes their own, through the API and
the Tokens page; another user's token cannot be revoked, and a revoked token stops working at once."""
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from mistudio.accounts import user_issue_token

pytestmark = pytest.mark.django_db


def api_with(token):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return api


def test_a_token_expires_after_thirty_days_by_default(alice):
    from knox.models import AuthToken

    _, token = user_issue_token(username="alice")
    row = AuthToken.objects.get(token_key=token[:15])
    assert row.expiry - row.created == pytest.approx(timedelta(days=30), abs=timedelta(seconds=5))
    assert api_with(token).get("/api/v1/jobs").status_code == 200
    AuthToken.objects.filter(pk=row.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert api_with(token).get("/api/v1/jobs").status_code == 401


def test_a_user_lists_and_revokes_their_own_tokens_through_the_api(alice):
    _, first = user_issue_token(username="alice")
    _, second = user_issue_token(username="alice")
    _, bobs = user_issue_token(username="bob")
    api = api_with(first)
    listed = api.get("/api/v1/tokens").json()["tokens"]
    assert [(t["token_key"], t["current"]) for t in listed] == [(second[:15], False), (first[:15], True)]
    assert all(t["expiry"] for t in listed) and first not in str(listed)  # never the token itself
    assert api.delete(f"/api/v1/tokens/{bobs[:15]}").status_code == 404  # not hers
    assert api_with(bobs).get("/api/v1/jobs").status_code == 200
    assert api.delete(f"/api/v1/tokens/{second[:15]}").status_code == 204
    assert api_with(second).get("/api/v1/jobs").status_code == 401
    assert api.delete(f"/api/v1/tokens/{first[:15]}").status_code == 204  # revoking the one in hand
    assert api.get("/api/v1/tokens").status_code == 401


def test_the_tokens_page_lists_and_revokes(client, alice):
    _, token = user_issue_token(username="alice")
    client.force_login(alice)
    page = client.get("/tokens/").content.decode()
    assert token[:15] in page and token not in page and "Revoke" in page
    done = client.post("/tokens/", {"token_key": token[:15]}, follow=True).content.decode()
    assert f"Token {token[:15]} revoked" in done
    assert api_with(token).get("/api/v1/jobs").status_code == 401
    assert "You have no API tokens" in done
