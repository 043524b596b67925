"""Settings for a test server whose password hasher counts its work (the login-timing test).

Django's PBKDF2 hasher, the default, with one change: every password it hashes adds a line to
the file named by PASSWORD_HASH_COUNT_FILE. The algorithm and the cost are Django's own, so
stored hashes are the same as on any server. A password hasher is Django's extension point;
nothing of ours is replaced. Start a server with DJANGO_SETTINGS_MODULE set to this module.
"""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth.hashers import PBKDF2PasswordHasher

from mcpsite.settings import *  # noqa: F403 (this module is the project's settings plus one hasher)
from mcpsite.settings import PASSWORD_HASHERS as _PROJECT_HASHERS

DJANGO_PBKDF2 = "django.contrib.auth.hashers.PBKDF2PasswordHasher"
PASSWORD_HASHERS = [
    "tests.support.counting_hasher.CountingPBKDF2PasswordHasher",
    *(hasher for hasher in _PROJECT_HASHERS if hasher != DJANGO_PBKDF2),
]


class CountingPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2 (pbkdf2_sha256, Django's iterations) that notes each password it hashes."""

    def encode(self, password: str, salt: str, iterations: Any = None) -> str:
        with open(os.environ["PASSWORD_HASH_COUNT_FILE"], "a") as count:
            count.write("hashed\n")
        return super().encode(password, salt, iterations)
