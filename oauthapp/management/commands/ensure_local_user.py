"""Create a local admin login on first run and print it once (used by `make run`)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

LOGIN_FILE = Path(settings.BASE_DIR) / ".local-login"


class Command(BaseCommand):
    help = "Create a local superuser if there is no user yet, and print the local login."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        if not User.objects.exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(username="admin", email="", password=password)
            LOGIN_FILE.write_text(f"admin {password}\n")
            LOGIN_FILE.chmod(0o600)
            # The only time the password is printed: afterwards it is in the file, not the log.
            self.stdout.write(
                self.style.SUCCESS(f"Local login: username admin  password {password}")
                + f"\n(kept in {LOGIN_FILE.name}; change it in {settings.PUBLIC_URL}/admin/)"
            )
            return
        if LOGIN_FILE.is_file():
            username, _, _password = LOGIN_FILE.read_text().strip().partition(" ")
            if User.objects.filter(username=username).exists():
                self.stdout.write(f"Local login: username {username} (the password is in {LOGIN_FILE.name})")
                return
        self.stdout.write("Users exist already; log in with yours (manage.py createsuperuser makes another).")
