"""The API token: required off loopback, then enforced on every route and socket."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from app import cli
from app.auth import TokenAuthority, TokenRequired
from app.server import create_app
from pipelines.passthrough import PassthroughPipeline
from streaming.client import StreamClient

from conftest import make_settings

TOKEN = "s3cret-token"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_refuses_to_bind_beyond_loopback_without_a_token(host, monkeypatch, capsys):
    monkeypatch.delenv("LATENTCAST_API_TOKEN", raising=False)
    with pytest.raises(TokenRequired, match="LATENTCAST_API_TOKEN"):
        create_app(make_settings(host=host))
    assert cli.main(["serve", "--preset", "tiny", "--host", host, "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith(f"latentcast serve: error: refusing to bind {host}: set LATENTCAST_API_TOKEN")
    create_app(make_settings(host=host, api_token=TOKEN))  # with a token it may


@pytest.fixture
def base_url(server_factory):
    return server_factory({"passthrough": PassthroughPipeline()}, api_token=TOKEN)


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/sessions", "/v1/pipelines", "/", "/demo.js", "/docs", "/openapi.json"])
def test_every_route_needs_the_token(base_url, path):
    denied = httpx.get(base_url + path)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert denied.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(base_url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(base_url + path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.get(base_url + path, params={"token": TOKEN}).status_code == 401  # the API token never rides in a URL


async def test_the_socket_needs_the_token(base_url):
    with pytest.raises(InvalidStatus) as err:
        await StreamClient.connect(base_url)
    assert err.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        await StreamClient.connect(base_url, token="wrong")
    async with await StreamClient.connect(base_url, token=TOKEN) as client:
        assert (await client.start("passthrough"))["session_id"]


async def test_browsers_use_short_lived_tokens_in_the_query_then_a_cookie(base_url):
    issued = httpx.post(base_url + "/v1/tokens", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    short = issued["token"]
    assert issued["expires_at"] > 0 and short != TOKEN
    with httpx.Client(base_url=base_url) as browser:
        page = browser.get("/", params={"token": short})
        assert page.status_code == 200 and "SameSite=Strict" in page.headers["set-cookie"]
        assert browser.get("/demo.js").status_code == 200  # the page's own files: by cookie
        # Another site's page cannot ride on the cookie (cross-site requests and socket handshakes).
        assert browser.get("/v1/sessions", headers={"Origin": "http://evil.example"}).status_code == 401
    # The page opens its socket with the short-lived token in the URL.
    async with await StreamClient.connect(f"{base_url.replace('http', 'ws')}/v1/stream?token={short}") as client:
        assert (await client.start("passthrough"))["session_id"]


def test_expired_and_forged_short_lived_tokens_are_refused():
    authority = TokenAuthority(TOKEN)
    fresh, _ = authority.issue(60)
    expired, _ = authority.issue(-1)
    assert authority.short_lived_valid(fresh)
    assert not authority.short_lived_valid(expired)
    assert not authority.short_lived_valid(fresh[:-2] + "xx")
    assert not TokenAuthority("other").short_lived_valid(fresh)
    assert not authority.short_lived_valid(TOKEN)


def test_without_a_token_on_loopback_everything_is_open_and_tokens_are_not_issued(server_factory):
    url = server_factory({"passthrough": PassthroughPipeline()})
    assert httpx.get(url + "/v1/sessions").status_code == 200
    refused = httpx.post(url + "/v1/tokens")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "auth_disabled"
