"""Every answer carries the Content-Security-Policy: no inline script or style without the page's
own nonce, nothing from another origin, no framing. (tests/system/browser/test_content_security_policy.py
shows the pages work under it in a real browser.)"""
import re

import pytest

pytestmark = pytest.mark.django_db


def directives(response):
    return {part.split()[0]: part.split()[1:] for part in response["Content-Security-Policy"].split("; ")}


def test_a_page_names_its_nonce_in_the_policy_and_on_each_inline_script_and_style(client, alice):
    client.force_login(alice)
    response = client.get("/jobs/")
    policy = directives(response)
    nonce = re.fullmatch(r"'nonce-([A-Za-z0-9+/=]+)'", policy["script-src"][1]).group(1)
    assert policy["script-src"] == ["'self'", f"'nonce-{nonce}'"] and policy["style-src"] == ["'self'", f"'nonce-{nonce}'"]
    page = response.content.decode()
    assert page.count(f'nonce="{nonce}"') == 2  # the site's style and its charts script
    assert not re.search(r"<(script|style)>", page) and ' style="' not in page
    assert client.get("/jobs/")["Content-Security-Policy"] != response["Content-Security-Policy"]  # fresh each time


def test_the_api_and_the_login_page_are_covered_and_nothing_may_frame_or_plug_in(client, alice_api):
    for response in (client.get("/accounts/login/"), alice_api.get("/api/v1/jobs"), client.get("/health")):
        policy = directives(response)
        assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
        assert "'unsafe-inline'" not in response["Content-Security-Policy"]
        assert "'unsafe-eval'" not in response["Content-Security-Policy"]
