"""A fast hasher for machine-generated client secrets.

Client secrets are 128 random characters: no dictionary attack applies, so the work factor
of a password hasher buys nothing and costs ~650 ms of CPU on every token request (an easy
denial of service on an open endpoint). A salted SHA-256 with constant-time comparison is
the right tool here. User passwords keep Django's default PBKDF2.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.contrib.auth.hashers import BasePasswordHasher, mask_hash
from django.utils.crypto import constant_time_compare
from django_stubs_ext import StrPromise


class ClientSecretHasher(BasePasswordHasher):
    algorithm = "client_secret_sha256"

    def salt(self) -> str:
        return secrets.token_hex(16)

    def encode(self, password: str, salt: str) -> str:
        self._check_encode_args(password, salt)  # type: ignore[attr-defined]
        digest = hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()
        return f"{self.algorithm}${salt}${digest}"

    def decode(self, encoded: str) -> dict[str, Any]:
        algorithm, salt, digest = encoded.split("$", 2)
        assert algorithm == self.algorithm
        return {"algorithm": algorithm, "hash": digest, "salt": salt}

    def verify(self, password: str, encoded: str) -> bool:
        decoded = self.decode(encoded)
        return constant_time_compare(encoded, self.encode(password, decoded["salt"]))

    def safe_summary(self, encoded: str) -> dict[str | StrPromise, Any]:
        decoded = self.decode(encoded)
        return {"algorithm": decoded["algorithm"], "salt": mask_hash(decoded["salt"]), "hash": "…"}

    def harden_runtime(self, password: str, encoded: str) -> None:
        return None
