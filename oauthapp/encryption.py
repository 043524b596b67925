"""Symmetric encryption for secrets the server must use again (the stored GitHub tokens).

Tokens we only compare are hashed; a token we must present to another service cannot be,
so it is sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from SECRET_KEY.
Keys from SECRET_KEY_FALLBACKS still decrypt, so SECRET_KEY can be rotated the usual way.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

_PURPOSE = b"oauthapp.encryption.v1"


class DecryptionError(Exception):
    """The ciphertext was not sealed by any of this server's keys (or was altered)."""


def _fernet_for(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_PURPOSE, info=b"fernet").derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _box() -> MultiFernet:
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([_fernet_for(secret) for secret in secrets])


def encrypt(plaintext: str) -> str:
    return _box().encrypt(plaintext.encode()).decode("ascii")


def decrypt(ciphertext: str) -> str:
    try:
        return _box().decrypt(ciphertext.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as exc:
        raise DecryptionError("the stored secret cannot be decrypted with this server's keys") from exc


def seal(plaintext: str, *, passphrase: str) -> str:
    """Encrypt under SECRET_KEY and `passphrase` together: opening it needs both.

    Used for what a refresh token was exchanged for: sealed under that (hashed at rest)
    refresh token, only whoever presents it again can read the result.
    """
    return _fernet_for(f"{settings.SECRET_KEY}\x00{passphrase}").encrypt(plaintext.encode()).decode("ascii")


def unseal(ciphertext: str, *, passphrase: str) -> str:
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    box = MultiFernet([_fernet_for(f"{secret}\x00{passphrase}") for secret in secrets])
    try:
        return box.decrypt(ciphertext.encode("ascii")).decode()
    except (InvalidToken, UnicodeError) as exc:
        raise DecryptionError("the sealed value cannot be opened with this passphrase") from exc
