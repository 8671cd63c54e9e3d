"""Secrets at rest: authenticated encryption with ENCRYPTION_KEY (Fernet, rotation via MultiFernet).

ENCRYPTION_KEY holds one or more Fernet keys separated by commas, newest first: the first encrypts,
every one of them decrypts, so keys rotate by prepending a new one and re-encrypting
(`MultiFernet.rotate`). Fernet tokens are authenticated (AES-128-CBC + HMAC-SHA256), which is what
lets the model checkpoints (pickles) be trusted: a token that does not verify is never unpickled.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from pagerstream.config import Secret

__all__ = ["InvalidToken", "NoKey", "box"]


class NoKey(RuntimeError):
    """ENCRYPTION_KEY is not set: refuse rather than store or trust unprotected data."""


def box(key: Secret | str) -> MultiFernet:
    value = key.get() if isinstance(key, Secret) else key
    if not value:
        raise NoKey("ENCRYPTION_KEY is not set (generate one: python -c "
                    "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
    return MultiFernet([Fernet(k.strip().encode()) for k in value.split(",") if k.strip()])
