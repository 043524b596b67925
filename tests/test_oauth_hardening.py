"""Issue 11's findings, each as its own regression test, over real HTTP against the live server."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from tests.support.flows import expire_refresh_grace
from tests.support.live import LiveServer
from tests.support.oauth import CALLBACK, Browser, OAuthClient, introspect, pkce_pair
from tests.test_oauth_refusals import application_count, assert_refused, code_for, token_refused


def events(server: LiveServer, kind: str, **where: str) -> list[tuple[Any, ...]]:
    """(username, client_name, address, detail) of the OAuth events of `kind`, oldest first."""
    clauses = "".join(f" AND e.{column} = ?" for column in where)
    return server.sql(
        "SELECT e.username, e.client_name, e.address, e.detail FROM oauthapp_oauthevent e "
        f"WHERE e.kind = ?{clauses} ORDER BY e.id",
        (kind, *where.values()),
    )


def client_pk(server: LiveServer, client: OAuthClient) -> int:
    return server.sql("SELECT id FROM oauthapp_application WHERE client_id = ?", (client.client_id,))[0][0]


# --- Malformed input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["\ud800", "a\udfffb", "nul\x00name"], ids=["surrogate", "low-surrogate", "nul"]
)
def test_it_refuses_a_client_name_no_database_can_store(server: LiveServer, name: str) -> None:
    body = json.dumps({"client_name": name, "redirect_uris": [CALLBACK]})  # ensure_ascii: \ud800 escaped
    before = server.sql("SELECT COUNT(*) FROM oauthapp_application")[0][0]
    response = httpx.post(
        f"{server.url}/register", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert_refused(response, "invalid_client_metadata")
    assert server.sql("SELECT COUNT(*) FROM oauthapp_application")[0][0] == before


NOT_OFFERED = [
    "urn:ietf:params:oauth:grant-type:device_code",
    "client_credentials",
    "password",
    "implicit",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:openid:params:grant-type:ciba",
]


@pytest.mark.parametrize("grant_type", NOT_OFFERED)
def test_every_grant_not_offered_is_unsupported_grant_type(server: LiveServer, grant_type: str) -> None:
    client = OAuthClient.register(server.url)
    body = token_refused(client.token(grant_type=grant_type), "unsupported_grant_type")
    assert "authorization_code" in body["error_description"]


def test_a_token_request_without_grant_type_is_invalid_request(server: LiveServer) -> None:
    client = OAuthClient.register(server.url)
    token_refused(client.token(), "invalid_request")


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
def test_an_oversized_form_body_gets_a_json_413(server: LiveServer, path: str) -> None:
    response = httpx.post(f"{server.url}{path}", data={"grant_type": "refresh_token", "pad": "x" * 70_000})
    body = assert_refused(response, "invalid_request", status=413)
    assert "65536 bytes" in body["error_description"]

    def chunks():  # no Content-Length: the cap holds for a streamed body too
        for _ in range(20):
            yield b"pad=" + b"x" * 4096 + b"&"

    streamed = httpx.post(
        f"{server.url}{path}",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_refused(streamed, "invalid_request", status=413)


@pytest.mark.parametrize("path", ["/token", "/revoke", "/introspect"])
def test_a_body_with_too_many_fields_gets_a_json_400(server: LiveServer, path: str) -> None:
    content = "&".join(f"f{n}=1" for n in range(1500))
    response = httpx.post(
        f"{server.url}{path}", content=content, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    body = assert_refused(response, "invalid_request")
    assert "too many fields" in body["error_description"]


# --- invalid_grant says which problem it was -------------------------------------------------------


def test_each_invalid_grant_names_its_reason(server: LiveServer, alice_browser: Browser) -> None:
    client = OAuthClient.register(server.url)
    other = OAuthClient.register(server.url)

    def described(response: httpx.Response) -> str:
        return token_refused(response, "invalid_grant")["error_description"]

    assert described(client.exchange("no-such-code", "x" * 43)) == "Unknown authorization code."
    code, verifier = code_for(client, alice_browser)
    assert "PKCE" in described(client.exchange(code, pkce_pair()[0]))
    assert "issued to another client" in described(other.exchange(code, verifier))
    mismatched = client.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri="http://localhost:1/x",
        code_verifier=verifier,
    )
    assert "redirect_uri" in described(mismatched)
    tokens = client.exchange(code, verifier).json()  # still usable after all those refusals
    assert "already used" in described(client.exchange(code, verifier))

    expired, expired_verifier = code_for(client, alice_browser)
    server.sql("UPDATE oauth2_provider_grant SET expires = '2000-01-01 00:00:00' WHERE code = ?", (expired,))
    assert described(client.exchange(expired, expired_verifier)) == "The authorization code has expired."

    assert described(client.refresh("no-such-refresh-token")) == "Unknown refresh token."
    fresh = obtain(client, alice_browser)
    assert "issued to another client" in described(other.refresh(fresh["refresh_token"]))
    revoked = httpx.post(
        f"{server.url}/revoke",
        data={
            "token": fresh["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": client.client_id,
        },
    )
    assert revoked.status_code == 200
    assert described(client.refresh(fresh["refresh_token"])) == "The refresh token has been revoked."
    assert tokens["access_token"]


def obtain(client: OAuthClient, browser: Browser) -> dict[str, Any]:
    code, verifier = code_for(client, browser)
    response = client.exchange(code, verifier)
    assert response.status_code == 200, response.text
    return response.json()


# --- Refresh grace (issue 10) -----------------------------------------------------------------------


def test_a_refresh_token_reused_within_the_grace_period_gets_the_same_tokens(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url)
    first = obtain(client, alice_browser)
    rotated = client.refresh(first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    retried = client.refresh(first["refresh_token"])  # a client that never saw the first answer
    assert retried.status_code == 200, retried.text
    assert retried.json()["access_token"] == rotated.json()["access_token"]
    assert retried.json()["refresh_token"] == rotated.json()["refresh_token"]
    assert 0 < retried.json()["expires_in"] <= 3600
    # Nothing was revoked and nothing new was minted: the family lives on.
    assert introspect(introspector, rotated.json()["access_token"])["active"] is True
    assert server.sql(
        "SELECT COUNT(*) FROM oauth2_provider_accesstoken WHERE application_id = ?",
        (client_pk(server, client),),
    ) == [(1,)]
    assert events(server, "refresh_reuse", application_id=str(client_pk(server, client))) == []
    onward = client.refresh(rotated.json()["refresh_token"])
    assert onward.status_code == 200, onward.text
    # Sealed, not stored in plaintext: the grace record holds no token.
    dump = repr(server.sql("SELECT * FROM oauthapp_refreshgrace"))
    assert rotated.json()["access_token"] not in dump and rotated.json()["refresh_token"] not in dump


def test_a_refresh_token_reused_after_the_grace_period_revokes_its_family(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    client = OAuthClient.register(server.url)
    first = obtain(client, alice_browser)
    rotated = client.refresh(first["refresh_token"]).json()
    expire_refresh_grace(server, client)
    replay = client.refresh(first["refresh_token"])
    assert "already used" in token_refused(replay, "invalid_grant")["error_description"]
    assert introspect(introspector, rotated["access_token"]) == {"active": False}
    token_refused(client.refresh(rotated["refresh_token"]), "invalid_grant")
    recorded = events(server, "refresh_reuse", application_id=str(client_pk(server, client)))
    assert len(recorded) == 1
    assert recorded[0][0] == "alice" and recorded[0][1] == "Test MCP client"


# --- Introspection ----------------------------------------------------------------------------------


def test_introspection_by_a_self_registered_client_is_refused_and_learns_nothing(
    server: LiveServer, alice_browser: Browser
) -> None:
    victim = obtain(OAuthClient.register(server.url), alice_browser)
    snoop = OAuthClient.register(server.url, token_endpoint_auth_method="client_secret_basic")
    assert snoop.client_secret
    token = {"token": victim["access_token"]}
    attempts = [
        httpx.post(f"{server.url}/introspect", data=token, auth=(snoop.client_id, snoop.client_secret)),
        httpx.post(
            f"{server.url}/introspect",
            data={**token, "client_id": snoop.client_id, "client_secret": snoop.client_secret},
        ),
        httpx.post(
            f"{server.url}/introspect",
            data=token,
            headers={"Authorization": f"Bearer {victim['access_token']}"},
        ),
        httpx.post(f"{server.url}/introspect", data=token),
    ]
    for response in attempts:
        body = assert_refused(response, "invalid_client", status=401)
        assert "active" not in body and "username" not in response.text
        assert response.headers["www-authenticate"].startswith("Basic")


def test_introspection_by_an_operator_marked_resource_server_works(
    server: LiveServer, alice_browser: Browser, introspector: OAuthClient
) -> None:
    tokens = obtain(OAuthClient.register(server.url), alice_browser)
    seen = introspect(introspector, tokens["access_token"])
    assert seen["active"] is True and seen["username"] == "alice"
    wrong_secret = httpx.post(
        f"{server.url}/introspect",
        data={"token": tokens["access_token"]},
        auth=(introspector.client_id, "not-the-secret"),
    )
    assert_refused(wrong_secret, "invalid_client", status=401)


def test_only_confidential_clients_can_be_marked_as_resource_servers(
    server: LiveServer, operator_browser: Browser
) -> None:
    from tests.support.oauth import admin_action

    public = OAuthClient.register(server.url)
    admin_action(
        operator_browser, "/admin/oauthapp/application/", "mark_resource_servers", client_pk(server, public)
    )
    assert server.sql(
        "SELECT is_resource_server FROM oauthapp_application WHERE client_id = ?", (public.client_id,)
    ) in ([(0,)], [(False,)])


# --- The OAuth event log ----------------------------------------------------------------------------


def test_registration_consent_token_and_revocation_are_recorded(
    server: LiveServer, bob_browser: Browser
) -> None:
    name = f"Evented {secrets.token_hex(3)}"
    client = OAuthClient.register(server.url, client_name=name)
    assert application_count(server, name) == 1
    registered = events(server, "client_registered", client_name=name)
    assert len(registered) == 1 and registered[0][2] == "127.0.0.1"

    denied, _ = client.authorize(bob_browser, approve=False)
    assert denied["error"] == "access_denied"
    assert [row[0] for row in events(server, "consent_denied", client_name=name)] == ["bob"]

    tokens = obtain(client, bob_browser)
    granted = events(server, "consent_granted", client_name=name)
    assert [row[0] for row in granted] == ["bob"]
    issued = events(server, "token_issued", client_name=name)
    assert len(issued) == 1 and json.loads(issued[0][3])["grant_type"] == "authorization_code"
    # A remembered consent is not recorded as a new one.
    obtain(client, bob_browser)
    assert len(events(server, "consent_granted", client_name=name)) == 1

    revoked = httpx.post(
        f"{server.url}/revoke", data={"token": tokens["access_token"], "client_id": client.client_id}
    )
    assert revoked.status_code == 200
    recorded = events(server, "token_revoked", client_name=name)
    assert [row[0] for row in recorded] == ["bob"]
    # Revoking an unknown token records nothing.
    httpx.post(f"{server.url}/revoke", data={"token": "nothing-like-it", "client_id": client.client_id})
    assert len(events(server, "token_revoked", client_name=name)) == 1


def test_the_event_log_is_in_admin_filterable_by_kind_user_and_client(
    server: LiveServer, operator_browser: Browser, alice_browser: Browser
) -> None:
    name = f"Listed {secrets.token_hex(3)}"
    client = OAuthClient.register(server.url, client_name=name)
    obtain(client, alice_browser)
    page = operator_browser.http.get(
        "/admin/oauthapp/oauthevent/", params={"kind": "token_issued", "q": name}
    )
    assert page.status_code == 200
    assert name in page.text
    by_client = operator_browser.http.get(
        "/admin/oauthapp/oauthevent/", params={"application__id__exact": client_pk(server, client)}
    )
    assert by_client.status_code == 200 and name in by_client.text and "client registered" in by_client.text
    alice_id = server.sql("SELECT id FROM auth_user WHERE username = 'alice'")[0][0]
    by_user = operator_browser.http.get("/admin/oauthapp/oauthevent/", params={"user__id__exact": alice_id})
    assert by_user.status_code == 200 and name in by_user.text
    assert operator_browser.http.get("/admin/oauthapp/oauthevent/add/").status_code == 403
