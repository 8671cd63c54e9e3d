"""Channel credentials (webhook signing secrets, bot tokens, API passwords) encrypted at rest.

Where: one JSON file, ``notify-secrets.enc.json`` (``$PAGERSTREAM_NOTIFY_SECRETS``, default
``$PAGERSTREAM_DATADIR/notify-secrets.enc.json``), one Fernet token per secret name:

    {"format": "pagerstream-notify-secrets", "version": 1, "secrets": {"ops-webhook": "gAAAAAB..."}}

Why a file and not a Redis hash: credentials are configuration, not state. The file is encrypted, so
it can travel like the rest of the configuration (a Kubernetes Secret/ConfigMap, a volume, a repo)
and every worker has it at start-up without depending on Redis being up, persistent, or spared by its
eviction policy; Redis here holds only what can be lost (rate buckets, dedup records, breaker
state). The file also makes rotation an auditable change of one artefact.

Each token encrypts ``{"n": <name>, "v": <the credentials>}`` with the first key of ENCRYPTION_KEY
(MultiFernet via pagerstream/crypto.py); reading checks the name, so a token copied under another
name is refused. Rotation: prepend a new key to ENCRYPTION_KEY, run ``pagerstream notifications
rotate-secrets`` (every token re-encrypted under the newest key, `MultiFernet.rotate`), then drop the
old key. Values never appear in logs, exceptions or reprs (`SecretDict` masks them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet

from pagerstream.config import Secret
from pagerstream.crypto import box

__all__ = ["FILE_NAME", "PATH_ENV", "SecretDict", "SecretError", "SecretNotFound", "SecretStore", "default_path"]

FILE_NAME = "notify-secrets.enc.json"
PATH_ENV = "PAGERSTREAM_NOTIFY_SECRETS"
FORMAT = "pagerstream-notify-secrets"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")


class SecretError(Exception):
    """A secret cannot be stored or read. The message names the secret, never its value."""


class SecretNotFound(SecretError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "secret not found"


class SecretDict(dict):  # type: ignore[type-arg]
    """The decrypted credentials: a plain dict to use, masked when printed or logged."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: '****'" for k in self) + "}"

    __str__ = __repr__


def default_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(PATH_ENV):
        return Path(env[PATH_ENV])
    return Path(env.get("PAGERSTREAM_DATADIR") or ".pagerstream-data") / FILE_NAME


class SecretStore:
    """`put(name, dict)`, `get(name) -> dict`, `rotate()`; callable as `ChannelContext.secret`."""

    def __init__(self, path: str | os.PathLike[str], key: Secret | str | MultiFernet) -> None:
        self.path = Path(path)
        self._box = key if isinstance(key, MultiFernet) else box(key)
        self._cache: tuple[tuple[int, int, int], dict[str, str]] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SecretStore:
        """Path from $PAGERSTREAM_NOTIFY_SECRETS / $PAGERSTREAM_DATADIR, key from $ENCRYPTION_KEY."""
        env = os.environ if env is None else env
        return cls(default_path(env), Secret(env.get("ENCRYPTION_KEY", "").strip()))

    def __repr__(self) -> str:
        return f"SecretStore(path={str(self.path)!r})"

    # --- reading --------------------------------------------------------------------------------
    def _tokens(self) -> dict[str, str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is not None and self._cache[0] == sig:
            return self._cache[1]
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise SecretError(f"{self.path}: not a readable secrets file ({type(e).__name__})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("secrets"), dict):
            raise SecretError(f"{self.path}: not a {FORMAT} file")
        tokens = {str(k): str(v) for k, v in doc["secrets"].items()}
        self._cache = (sig, tokens)
        return tokens

    def names(self) -> list[str]:
        return sorted(self._tokens())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._tokens()

    def get(self, name: str) -> SecretDict:
        token = self._tokens().get(name)
        if token is None:
            raise SecretNotFound(f"no notification secret named {name!r} in {self.path}")
        try:
            obj = json.loads(self._box.decrypt(token.encode("ascii")))
        except InvalidToken:
            raise SecretError(f"secret {name!r} does not decrypt with ENCRYPTION_KEY (wrong or dropped key?)") \
                from None
        if not isinstance(obj, dict) or obj.get("n") != name or not isinstance(obj.get("v"), dict):
            raise SecretError(f"secret {name!r} was encrypted under another name; refusing it")
        return SecretDict(obj["v"])

    __call__ = get

    # --- writing --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        """Read-modify-write under an exclusive lock; the dict yielded is written back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._cache = None
                tokens = dict(self._tokens())
                yield tokens
                self._write(tokens)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, tokens: dict[str, str]) -> None:
        doc = {"format": FORMAT, "version": 1, "secrets": dict(sorted(tokens.items()))}
        fd, tmp = tempfile.mkstemp(prefix=".notify-secrets.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._cache = None

    def put(self, name: str, value: Mapping[str, Any]) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SecretError("secret names are 1-100 characters of [A-Za-z0-9._-], starting with a letter or digit")
        if not isinstance(value, Mapping) or not value:
            raise SecretError(f"secret {name!r}: expected a non-empty mapping of credentials")
        try:
            plain = json.dumps({"n": name, "v": dict(value)}, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError):
            raise SecretError(f"secret {name!r}: values must be JSON (strings, numbers, lists, objects)") from None
        token = self._box.encrypt(plain).decode("ascii")
        with self._locked() as tokens:
            tokens[name] = token

    def delete(self, name: str) -> bool:
        with self._locked() as tokens:
            return tokens.pop(name, None) is not None

    def rotate(self) -> int:
        """Re-encrypt every secret under the newest key (the first of ENCRYPTION_KEY); the number done.
        Fails as a whole, changing nothing, when some secret decrypts under none of the keys."""
        with self._locked() as tokens:
            out: dict[str, str] = {}
            for name, token in tokens.items():
                try:
                    out[name] = self._box.rotate(token.encode("ascii")).decode("ascii")
                except InvalidToken:
                    raise SecretError(f"secret {name!r} decrypts under none of the keys in ENCRYPTION_KEY; "
                                      "nothing was rotated") from None
            tokens.update(out)
            return len(out)
