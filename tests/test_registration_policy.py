"""Unit tests of the RFC 7591 policy functions (the HTTP refusals live in test_oauth_refusals)."""

from __future__ import annotations

from typing import Any

import pytest

from oauthapp.registration import RegistrationError, parse_client_metadata, redirect_uri_problem

GOOD = [
    "https://client.example/callback",
    "https://client.example:8443/cb?x=1",
    "http://localhost:3335/oauth/callback",
    "http://127.0.0.1:6276/oauth/callback",
    "http://[::1]:8080/callback",
    "HTTPS://Client.Example/cb",
]
BAD = {
    "javascript:alert(1)": "javascript scheme",
    "data:text/html,x": "data scheme",
    "file:///etc/passwd": "file scheme",
    "myapp://cb": "myapp scheme",
    "com.example.app:/cb": "com.example.app scheme",
    "http://example.com/cb": "only on localhost",
    "http://localhost.evil.example/cb": "only on localhost",
    "https://example.com/cb#x": "fragment",
    "https://u:p@example.com/cb": "credentials",
    "http://[::1/cb": "malformed",
    "https://example.com:99999/cb": "malformed",
    "https:///cb": "needs a host",
    "/cb": "empty scheme",
    "https://example.com/a b": "whitespace",
    "https://example.com/\x00": "control",
    "": "non-empty string",
}


@pytest.mark.parametrize("uri", GOOD)
def test_redirect_uri_policy_allows_https_and_loopback_http(uri: str) -> None:
    assert redirect_uri_problem(uri) is None


@pytest.mark.parametrize(("uri", "reason"), BAD.items())
def test_redirect_uri_policy_names_what_is_wrong(uri: str, reason: str) -> None:
    problem = redirect_uri_problem(uri)
    assert problem is not None and reason in problem


@pytest.mark.parametrize("value", [None, 5, ["https://x.example"], {"u": 1}, b"https://x.example"])
def test_redirect_uri_policy_rejects_non_strings(value: object) -> None:
    assert redirect_uri_problem(value) == "each redirect URI must be a non-empty string"


def parse(**fields: Any):
    return parse_client_metadata({"redirect_uris": ["http://localhost:3335/oauth/callback"], **fields})


def test_it_defaults_what_the_client_left_out() -> None:
    metadata = parse()
    assert metadata.token_endpoint_auth_method == "client_secret_basic"
    assert metadata.grant_types == ["authorization_code"]
    assert metadata.response_types == ["code"]
    assert metadata.scope == "mcp"
    assert metadata.client_name == "" and metadata.extra == {}


def test_it_treats_null_as_unset() -> None:
    metadata = parse(client_name=None, scope=None, token_endpoint_auth_method=None, grant_types=None)
    assert metadata.scope == "mcp" and metadata.grant_types == ["authorization_code"]


def test_it_replaces_unknown_scopes_with_the_default() -> None:
    assert parse(scope="openid email profile").scope == "mcp"
    assert parse(scope="").scope == "mcp"
    assert parse(scope="profile mcp mcp").scope == "mcp"


def test_it_keeps_known_extra_metadata_and_drops_unknown_fields() -> None:
    metadata = parse(client_uri="https://c.example", contacts=["a@c.example"], software_id="x", color="red")
    assert metadata.extra == {
        "client_uri": "https://c.example",
        "contacts": ["a@c.example"],
        "software_id": "x",
    }


def test_it_deduplicates_redirect_uris() -> None:
    uri = "http://localhost:3335/oauth/callback"
    assert parse_client_metadata({"redirect_uris": [uri, uri]}).redirect_uris == [uri]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"client_name": 0}, "invalid_client_metadata"),
        ({"scope": False}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": []}, "invalid_client_metadata"),
        ({"grant_types": ["authorization_code", "implicit"]}, "invalid_client_metadata"),
        ({"response_types": ["code", "token"]}, "invalid_client_metadata"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "http://localhost/cb"}, "invalid_redirect_uri"),
    ],
)
def test_it_refuses_metadata_of_the_wrong_shape(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(RegistrationError) as refused:
        parse(**fields)
    assert refused.value.error == error and refused.value.description


@pytest.mark.parametrize("body", [None, [], "x", 5])
def test_it_refuses_a_body_that_is_not_an_object(body: object) -> None:
    with pytest.raises(RegistrationError) as refused:
        parse_client_metadata(body)
    assert refused.value.error == "invalid_client_metadata"
