"""Create a personal access token for a user and print it (for CI jobs and scripts)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from oauthapp.forms import MAX_PERSONAL_TOKEN_DAYS, PersonalTokenForm
from oauthapp.services import personal_token_create


class Command(BaseCommand):
    help = (
        "Create a personal access token for USERNAME and print it on stdout (only this once; it is "
        "stored hashed). It works as `Authorization: Bearer <token>` on /mcp and /sse."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", required=True, help="What the token is for, as the user will see it.")
        parser.add_argument(
            "--expires-days",
            type=int,
            default=None,
            help=f"Days until it expires (1 to {MAX_PERSONAL_TOKEN_DAYS}); without it, it does not expire.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        form = PersonalTokenForm({"name": options["name"], "expires_in_days": options["expires_days"]})
        if not form.is_valid():
            problems = "; ".join(
                f"{field}: {' '.join(str(error) for error in errors)}"
                for field, errors in form.errors.items()
            )
            raise CommandError(problems)
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: options["username"]})
        except User.DoesNotExist as exc:
            raise CommandError(f"No user {options['username']!r}") from exc
        if not user.is_active:
            raise CommandError(f"User {options['username']!r} is inactive; its tokens would not work")
        issued = personal_token_create(
            user=user, name=form.cleaned_data["name"], expires_in_days=form.cleaned_data["expires_in_days"]
        )
        expiry = (
            "no expiry"
            if issued.record.never_expires
            else f"expires {issued.record.expires:%Y-%m-%d %H:%M} UTC"
        )
        self.stderr.write(f"Personal access token {issued.record.name!r} for {user} ({expiry}):")
        self.stdout.write(issued.token)
        # The token is bound to PUBLIC_URL as this command sees it; a server started with another
        # PORT (make run PORT=N) has another origin and would refuse it.
        where = f"It works on {settings.PUBLIC_URL}/mcp and {settings.PUBLIC_URL}/sse only"
        if not os.environ.get("PUBLIC_URL"):
            where += " (for a server on another port, run this command with PORT=<port>, as make run got it)"
        self.stderr.write(where + ".")
