"""Channel secrets at rest (pagerstream/notify/secrets.py) and `pagerstream notifications rotate-secrets`."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from pagerstream.cli_notify import notifications
from pagerstream.notify.secrets import FILE_NAME, SecretError, SecretNotFound, SecretStore, default_path

SIGNING = "whsec-3f9c2a7be41d4c0f8a6b5e2d1c9f7a3b"
TOKEN = "xoxb-not-a-real-token-1234567890abcdef"


def _key() -> str:
    return Fernet.generate_key().decode()


def test_put_get_roundtrip_and_nothing_readable_on_disk(tmp_path: Path):
    path = tmp_path / FILE_NAME
    store = SecretStore(path, _key())
    store.put("ops-webhook", {"signing_secret": SIGNING})
    store.put("slack-bot", {"token": TOKEN, "scopes": ["chat:write"]})
    assert store.get("ops-webhook") == {"signing_secret": SIGNING}
    assert store("slack-bot")["scopes"] == ["chat:write"]  # callable: ChannelContext.secret
    assert store.names() == ["ops-webhook", "slack-bot"] and "slack-bot" in store
    raw = path.read_text()
    assert SIGNING not in raw and TOKEN not in raw and "whsec" not in raw
    assert json.loads(raw)["format"] == "pagerstream-notify-secrets"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.put("ops-webhook", {"signing_secret": SIGNING + "2"})  # replace
    assert store.get("ops-webhook")["signing_secret"] == SIGNING + "2"
    assert store.delete("slack-bot") and not store.delete("slack-bot")
    with pytest.raises(SecretNotFound, match="slack-bot"):
        store.get("slack-bot")


def test_another_process_sees_changes(tmp_path: Path):
    key = _key()
    a, b = SecretStore(tmp_path / FILE_NAME, key), SecretStore(tmp_path / FILE_NAME, key)
    a.put("x", {"v": "1"})
    assert b.get("x") == {"v": "1"}
    a.put("x", {"v": "2"})
    assert b.get("x") == {"v": "2"}  # the cache follows the file


def test_values_are_masked_in_repr_and_str(tmp_path: Path, caplog):
    store = SecretStore(tmp_path / FILE_NAME, _key())
    store.put("ops-webhook", {"signing_secret": SIGNING})
    creds = store.get("ops-webhook")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("creds %s %r store %r", creds, creds, store)
        logging.getLogger("test").info("in a dict: %s", {"c": creds})
    assert SIGNING not in caplog.text and "signing_secret" in caplog.text and "****" in caplog.text
    assert SIGNING not in repr(creds) and SIGNING not in str(creds) and SIGNING not in repr(store)


def test_wrong_key_and_swapped_tokens_are_refused_without_leaking(tmp_path: Path):
    path = tmp_path / FILE_NAME
    store = SecretStore(path, _key())
    store.put("a", {"signing_secret": SIGNING})
    store.put("b", {"signing_secret": "other-secret-value-0000000000000"})
    with pytest.raises(SecretError, match="does not decrypt") as ei:
        SecretStore(path, _key()).get("a")
    assert SIGNING not in str(ei.value)
    doc = json.loads(path.read_text())
    doc["secrets"]["a"], doc["secrets"]["b"] = doc["secrets"]["b"], doc["secrets"]["a"]
    path.write_text(json.dumps(doc))
    with pytest.raises(SecretError, match="another name"):
        store.get("a")


def test_bad_names_and_values(tmp_path: Path):
    store = SecretStore(tmp_path / FILE_NAME, _key())
    for bad in ("", "../x", "a b", "x" * 101):
        with pytest.raises(SecretError):
            store.put(bad, {"k": "v"})
    with pytest.raises(SecretError):
        store.put("ok", {})
    with pytest.raises(SecretError, match="JSON"):
        store.put("ok", {"k": object()})


def test_rotation_lets_the_old_key_be_dropped(tmp_path: Path):
    path = tmp_path / FILE_NAME
    old, new = _key(), _key()
    SecretStore(path, old).put("ops-webhook", {"signing_secret": SIGNING})
    SecretStore(path, old).put("slack-bot", {"token": TOKEN})
    with pytest.raises(SecretError):  # before rotation the new key alone reads nothing
        SecretStore(path, new).get("ops-webhook")
    both = SecretStore(path, f"{new},{old}")
    assert both.get("ops-webhook")["signing_secret"] == SIGNING  # new,old reads old tokens
    assert both.rotate() == 2
    only_new = SecretStore(path, new)
    assert only_new.get("ops-webhook")["signing_secret"] == SIGNING
    assert only_new.get("slack-bot")["token"] == TOKEN
    with pytest.raises(SecretError):
        SecretStore(path, old).get("ops-webhook")


def test_rotation_fails_as_a_whole_when_a_token_is_undecryptable(tmp_path: Path):
    path = tmp_path / FILE_NAME
    k1, k2 = _key(), _key()
    SecretStore(path, k1).put("a", {"v": "1"})
    SecretStore(path, k2).put("b", {"v": "2"})  # written under a key the rotating store does not hold
    before = path.read_text()
    with pytest.raises(SecretError, match="'b'"):
        SecretStore(path, f"{_key()},{k1}").rotate()
    assert path.read_text() == before


def test_default_path(tmp_path: Path):
    assert default_path({"PAGERSTREAM_DATADIR": str(tmp_path)}) == tmp_path / FILE_NAME
    assert default_path({"PAGERSTREAM_NOTIFY_SECRETS": "/x/y.json"}) == Path("/x/y.json")


def test_cli_set_list_rotate(tmp_path: Path, monkeypatch):
    path = tmp_path / "s.enc.json"
    old, new = _key(), _key()
    monkeypatch.setenv("PAGERSTREAM_NOTIFY_SECRETS", str(path))
    monkeypatch.setenv("ENCRYPTION_KEY", old)
    runner = CliRunner()
    r = runner.invoke(notifications, ["set-secret", "ops-webhook"], input=json.dumps({"signing_secret": SIGNING}))
    assert r.exit_code == 0, r.output
    assert SIGNING not in r.output and "signing_secret" in r.output
    r = runner.invoke(notifications, ["list-secrets"])
    assert r.output.split() == ["ops-webhook"]
    monkeypatch.setenv("ENCRYPTION_KEY", f"{new},{old}")
    r = runner.invoke(notifications, ["rotate-secrets"])
    assert r.exit_code == 0 and "re-encrypted 1 secret" in r.output, r.output
    monkeypatch.setenv("ENCRYPTION_KEY", new)  # the old key dropped
    assert SecretStore.from_env().get("ops-webhook")["signing_secret"] == SIGNING
    monkeypatch.setenv("ENCRYPTION_KEY", "")
    r = runner.invoke(notifications, ["rotate-secrets"])
    assert r.exit_code == 2 and "ENCRYPTION_KEY is not set" in r.output
    monkeypatch.setenv("ENCRYPTION_KEY", _key())
    r = runner.invoke(notifications, ["rotate-secrets"])
    assert r.exit_code == 1 and "none of the keys" in r.output and SIGNING not in r.output
