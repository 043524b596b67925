"""`manage.py prune_expired` against real database state."""

from __future__ import annotations

import secrets
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone
from oauth2_provider.models import AccessToken, Grant, RefreshToken

from oauthapp.models import Application, Consent

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


@pytest.fixture
def user():
    return get_user_model().objects.create_user("carol", password="carol-password-789")


def make_client(
    name: str, *, source: str = "dcr", age: timedelta, last_used: timedelta | None
) -> Application:
    now = timezone.now()
    application = Application.objects.create(
        name=name,
        client_type=Application.CLIENT_PUBLIC,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris="http://localhost:33418/oauth/callback",
        registration_source=source,
        last_used_at=None if last_used is None else now - last_used,
    )
    # `created` is auto_now_add: backdate it after the insert.
    Application.objects.filter(pk=application.pk).update(created=now - age)
    return application


def make_access_token(application: Application, user, *, expires_in: timedelta) -> AccessToken:
    return AccessToken.objects.create(
        user=user,
        application=application,
        token=secrets.token_urlsafe(30),
        expires=timezone.now() + expires_in,
        scope="mcp",
    )


def run(*args: str) -> str:
    out = StringIO()
    call_command("prune_expired", *args, stdout=out)
    return out.getvalue()


def test_it_deletes_expired_access_tokens_and_codes_and_keeps_live_ones(user) -> None:
    client = make_client("used", age=DAY, last_used=timedelta(minutes=5))
    live = make_access_token(client, user, expires_in=timedelta(hours=1))
    dead = make_access_token(client, user, expires_in=-timedelta(minutes=1))
    Grant.objects.create(
        user=user,
        application=client,
        code="expired-code",
        expires=timezone.now() - timedelta(seconds=1),
        redirect_uri=client.redirect_uris,
        scope="mcp",
    )
    Grant.objects.create(
        user=user,
        application=client,
        code="live-code",
        expires=timezone.now() + timedelta(seconds=60),
        redirect_uri=client.redirect_uris,
        scope="mcp",
    )

    output = run()

    assert set(AccessToken.objects.values_list("pk", flat=True)) == {live.pk}
    assert not AccessToken.objects.filter(pk=dead.pk).exists()
    assert list(Grant.objects.values_list("code", flat=True)) == ["live-code"]
    assert "Deleted 1 access tokens" in output
    assert "1 authorization codes" in output


def test_it_deletes_dynamic_clients_unused_for_the_configured_days(user) -> None:
    stale = make_client("stale", age=200 * DAY, last_used=100 * DAY)
    recent = make_client("recent", age=200 * DAY, last_used=10 * DAY)
    Consent.objects.create(user=user, application=stale, scope="mcp")

    output = run("--unused-days", "30")

    assert set(Application.objects.values_list("name", flat=True)) == {"recent"}
    assert not Consent.objects.filter(application_id=stale.pk).exists()
    assert "1 unused clients" in output
    # A shorter window takes the other one too.
    run("--unused-days", "5")
    assert not Application.objects.filter(pk=recent.pk).exists()


def test_it_deletes_never_used_registrations_after_the_grace_period() -> None:
    make_client("abandoned", age=3 * DAY, last_used=None)
    make_client("just-registered", age=timedelta(hours=2), last_used=None)

    run("--never-used-days", "1")

    assert list(Application.objects.values_list("name", flat=True)) == ["just-registered"]


def test_it_keeps_manual_clients_and_clients_holding_usable_tokens(user) -> None:
    make_client("manual", source="manual", age=400 * DAY, last_used=None)
    with_access = make_client("with-access-token", age=400 * DAY, last_used=300 * DAY)
    make_access_token(with_access, user, expires_in=timedelta(hours=1))
    with_refresh = make_client("with-refresh-token", age=400 * DAY, last_used=300 * DAY)
    expired_access = make_access_token(with_refresh, user, expires_in=-timedelta(hours=1))
    RefreshToken.objects.create(
        user=user, application=with_refresh, token=secrets.token_urlsafe(30), access_token=expired_access
    )
    doomed = make_client("doomed", age=400 * DAY, last_used=300 * DAY)
    make_access_token(doomed, user, expires_in=-timedelta(days=299))

    run("--unused-days", "90")

    assert set(Application.objects.values_list("name", flat=True)) == {
        "manual",
        "with-access-token",
        "with-refresh-token",
    }
    assert not AccessToken.objects.filter(application_id=doomed.pk).exists()


def test_it_defaults_to_the_client_unused_days_setting(settings) -> None:
    settings.CLIENT_UNUSED_DAYS = 7
    make_client("eight-days", age=30 * DAY, last_used=8 * DAY)
    from oauthapp.management.commands.prune_expired import Command

    parser = Command().create_parser("manage.py", "prune_expired")
    assert parser.parse_args([]).unused_days == 7
    run()
    assert not Application.objects.filter(name="eight-days").exists()


def test_it_rejects_a_window_below_one_day() -> None:
    with pytest.raises(CommandError, match="at least 1"):
        run("--unused-days", "0")


def test_it_deletes_oauth_events_past_the_retention_and_keeps_the_rest(settings, user) -> None:
    from oauthapp.models import OAuthEvent
    from oauthapp.services import oauth_event_record

    settings.OAUTH_EVENT_RETENTION_DAYS = 30
    old = oauth_event_record(kind=OAuthEvent.Kind.LOGIN_REFUSED, username="mallory", address="192.0.2.1")
    OAuthEvent.objects.filter(pk=old.pk).update(created=timezone.now() - 31 * DAY)
    recent = oauth_event_record(kind=OAuthEvent.Kind.TOKEN_ISSUED, user=user)
    assert recent.username == "carol"

    output = run()

    assert list(OAuthEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert "1 OAuth events older than 30 days" in output


def test_it_refuses_an_unknown_event_kind() -> None:
    from oauthapp.services import oauth_event_record

    with pytest.raises(ValueError, match="unknown OAuth event kind"):
        oauth_event_record(kind="something_else")


def test_it_forgets_spent_codes_after_a_day_and_grace_records_after_the_grace(user) -> None:
    from oauthapp.models import RefreshGrace, SpentAuthorizationCode

    client = make_client("spender", age=DAY, last_used=timedelta(minutes=1))
    access = make_access_token(client, user, expires_in=timedelta(hours=1))
    old_code = SpentAuthorizationCode.objects.create(code_checksum="a" * 64, application=client, user=user)
    SpentAuthorizationCode.objects.filter(pk=old_code.pk).update(spent_at=timezone.now() - 2 * DAY)
    new_code = SpentAuthorizationCode.objects.create(code_checksum="b" * 64, application=client, user=user)
    rotated = RefreshToken.objects.create(
        user=user, application=client, token=secrets.token_urlsafe(30), access_token=access
    )
    grace = RefreshGrace.objects.create(refresh_token=rotated, ciphertext="sealed")
    RefreshGrace.objects.filter(pk=grace.pk).update(created=timezone.now() - timedelta(hours=1))

    run()

    assert list(SpentAuthorizationCode.objects.values_list("pk", flat=True)) == [new_code.pk]
    assert not RefreshGrace.objects.exists()
