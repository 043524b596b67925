"""Delete expired tokens and codes and abandoned dynamically registered clients."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from oauthapp.services import expired_prune


class Command(BaseCommand):
    help = (
        "Delete expired access/refresh tokens and authorization codes, and dynamically registered "
        "clients unused for --unused-days (or never used --never-used-days after registering), "
        "and OAuth events older than OAUTH_EVENT_RETENTION_DAYS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--unused-days", type=int, default=settings.CLIENT_UNUSED_DAYS)
        parser.add_argument("--never-used-days", type=int, default=settings.CLIENT_NEVER_USED_DAYS)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["unused_days"] < 1 or options["never_used_days"] < 1:
            raise CommandError("--unused-days and --never-used-days must be at least 1")
        report = expired_prune(unused_days=options["unused_days"], never_used_days=options["never_used_days"])
        self.stdout.write(
            f"Deleted {report.access_tokens} access tokens, {report.refresh_tokens} refresh tokens, "
            f"{report.grants} authorization codes, {report.clients} unused clients and "
            f"{report.events} OAuth events older than {settings.OAUTH_EVENT_RETENTION_DAYS} days."
        )
