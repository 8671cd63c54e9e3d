"""Notification destinations and routing rules, from YAML (``$PAGERSTREAM_NOTIFY_CONFIG``).

    destinations:
      - name: ops-webhook            # unique; [A-Za-z0-9._-]
        channel: webhook             # slack_webhook | slack_api | teams | email | webhook | jira | servicenow
        config: {url: "https://hooks.example.com/pagerstream"}   # non-secret settings only
        secret_ref: ops-webhook      # name in the encrypted secrets file (pagerstream/notify/secrets.py)
        rate: 1                      # messages per second (token bucket shared by all workers)
        burst: 5
    routes:                          # every matching rule adds its destinations (in order, no repeats)
      - name: payments-critical      # optional, shown in explanations
        match:                       # all given fields must match; values are exact or shell patterns
          service: [payments, "payments-*"]
          team: payments
          severity: [critical, error]
          change: [opened, acknowledged, resolved, auto_resolved]   # IncidentEvent.change
        to: [ops-webhook]
        stop: false                  # true: later rules are not looked at when this one matched
    default: [ops-webhook]           # when no rule matched (optional)

`load_notify_config(path)` validates everything and raises `NotifyConfigError` listing every problem
(with its place in the file) at once. Channel-specific checks come from the channel's module
(`CHANNEL_MODULES`): its ``VALIDATORS[channel]`` or ``validate_config(config) -> list[str]``.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pagerstream.notify.base import Destination

__all__ = [
    "CHANNELS",
    "CHANNEL_MODULES",
    "CONFIG_ENV",
    "NotifyConfig",
    "NotifyConfigError",
    "Rule",
    "channel_for",
    "channel_validator",
    "load_notify_config",
    "parse_notify_config",
]

CONFIG_ENV = "PAGERSTREAM_NOTIFY_CONFIG"
CHANNELS = frozenset({"slack_webhook", "slack_api", "teams", "email", "webhook", "jira", "servicenow"})
MATCH_FIELDS = ("service", "team", "severity", "change")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
# Keys that hold credentials belong in the secrets file, never in the (plain) config.
_SECRETISH = re.compile(r"(secret|password|passwd|token|api[_-]?key|private[_-]?key|credential)", re.IGNORECASE)
_NOT_SECRET = re.compile(r"[_-](url|uri|header|field|ref|name|type|path|file)$", re.IGNORECASE)  # token_url, secret_ref


class NotifyConfigError(ValueError):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Rule:
    name: str
    match: dict[str, tuple[str, ...]]  # field -> patterns (any may match); absent field: anything
    to: tuple[str, ...]
    stop: bool = False

    def matches(self, incident: Mapping[str, Any]) -> bool:
        for f, patterns in self.match.items():
            v = incident.get(f)
            if v is None:
                return False
            v = str(v).lower() if f in ("severity", "change") else str(v)
            if not any(fnmatch.fnmatchcase(v, p) for p in patterns):
                return False
        return True


@dataclass(frozen=True)
class NotifyConfig:
    destinations: dict[str, Destination]
    rules: tuple[Rule, ...] = ()
    default: tuple[str, ...] = ()
    source: str = field(default="<memory>", compare=False)

    def route(self, incident: Mapping[str, Any]) -> list[Destination]:
        """The destinations for one IncidentEvent record (service, team, severity, change)."""
        return [self.destinations[n] for n in self.explain(incident)[0]]

    def explain(self, incident: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """(destination names, why) - why lists each rule that matched, or that the default applied."""
        names: list[str] = []
        why: list[str] = []
        for r in self.rules:
            if r.matches(incident):
                why.append(f"rule {r.name!r} -> {', '.join(r.to)}")
                names.extend(n for n in r.to if n not in names)
                if r.stop:
                    break
        if not why and self.default:
            why.append(f"no rule matched -> default {', '.join(self.default)}")
            names.extend(n for n in self.default if n not in names)
        return names, why


def load_notify_config(path: str | os.PathLike[str] | None = None, *, secret_names: Iterable[str] | None = None,
                       ) -> NotifyConfig:
    """Read and validate the YAML file (default $PAGERSTREAM_NOTIFY_CONFIG). With `secret_names`, every
    secret_ref must be one of them (pass `SecretStore.names()`)."""
    p = Path(path or os.environ.get(CONFIG_ENV) or "")
    if not str(path or os.environ.get(CONFIG_ENV) or ""):
        raise NotifyConfigError(CONFIG_ENV, ["no notifications config given"])
    try:
        text = p.read_text("utf-8")
    except OSError as e:
        raise NotifyConfigError(str(p), [f"cannot read: {e.strerror or type(e).__name__}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise NotifyConfigError(str(p), [f"not valid YAML{where}"]) from None
    return parse_notify_config(doc, source=str(p), secret_names=secret_names)


def _strings(v: Any) -> list[str] | None:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return list(v)
    return None


def _secretish_keys(obj: Any, path: str) -> list[str]:
    out: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if (isinstance(k, str) and _SECRETISH.search(k) and not _NOT_SECRET.search(k)
                    and isinstance(v, (str, int, float))):
                out.append(f"{path}.{k}")
            out.extend(_secretish_keys(v, f"{path}.{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_secretish_keys(v, f"{path}[{i}]"))
    return out


# channel -> module pagerstream.notify.<module> that implements it
CHANNEL_MODULES = {"webhook": "webhook", "slack_webhook": "slack", "slack_api": "slack", "teams": "teams",
                   "email": "email", "jira": "jira", "servicenow": "servicenow"}


def _channel_module(channel: str) -> Any:
    name = f"pagerstream.notify.{CHANNEL_MODULES.get(channel, channel)}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


def channel_validator(channel: str) -> Any:
    """The module's config check for `channel`: VALIDATORS[channel], else validate_config, else None."""
    mod = _channel_module(channel)
    if mod is None:
        return None
    check = (getattr(mod, "VALIDATORS", None) or {}).get(channel) or getattr(mod, "validate_config", None)
    return check if callable(check) else None


def channel_for(channel: str) -> Any:
    """A ready Channel object for `channel` (CHANNEL, CHANNELS[channel] or a class with that `kind`)."""
    mod = _channel_module(channel)
    if mod is None:
        return None
    obj = getattr(mod, "CHANNEL", None)
    if obj is not None and getattr(obj, "kind", None) == channel:
        return obj
    found = (getattr(mod, "CHANNELS", None) or {}).get(channel)
    if found is None:
        found = next((v for v in vars(mod).values() if isinstance(v, type) and getattr(v, "kind", None) == channel
                      and callable(getattr(v, "send", None))), None)
    return found() if isinstance(found, type) else found


def _channel_checks(channel: str, config: dict[str, Any]) -> list[str]:
    check = channel_validator(channel)
    return list(check(config)) if check is not None else []


def parse_notify_config(doc: Any, *, source: str = "<memory>", secret_names: Iterable[str] | None = None,
                        ) -> NotifyConfig:
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise NotifyConfigError(source, ["expected a mapping with 'destinations' (and 'routes', 'default')"])
    for k in doc:
        if k not in ("destinations", "routes", "default"):
            problems.append(f"{k}: unknown key (expected destinations, routes, default)")
    known_secrets = set(secret_names) if secret_names is not None else None

    dests: dict[str, Destination] = {}
    raw_dests = doc.get("destinations")
    if not isinstance(raw_dests, list) or not raw_dests:
        problems.append("destinations: expected a non-empty list")
        raw_dests = []
    for i, d in enumerate(raw_dests):
        at = f"destinations[{i}]"
        if not isinstance(d, Mapping):
            problems.append(f"{at}: expected a mapping")
            continue
        name = d.get("name")
        if isinstance(name, str) and _NAME.fullmatch(name):
            at = f"destinations[{i}] ({name})"
        else:
            problems.append(f"{at}.name: expected 1-64 characters of [A-Za-z0-9._-]")
            name = None
        for k in d:
            if k not in ("name", "channel", "config", "secret_ref", "rate", "burst"):
                problems.append(f"{at}.{k}: unknown key (expected name, channel, config, secret_ref, rate, burst)")
        channel = d.get("channel")
        if channel not in CHANNELS:
            problems.append(f"{at}.channel: expected one of {', '.join(sorted(CHANNELS))}")
        config = d.get("config") if d.get("config") is not None else {}
        if not isinstance(config, Mapping):
            problems.append(f"{at}.config: expected a mapping")
            config = {}
        for bad in _secretish_keys(config, f"{at}.config"):
            problems.append(f"{bad}: looks like a credential; put it in the secrets file and use secret_ref")
        secret_ref = d.get("secret_ref")
        if secret_ref is not None and not (isinstance(secret_ref, str) and _NAME.fullmatch(secret_ref)):
            problems.append(f"{at}.secret_ref: expected the name of a notification secret")
            secret_ref = None
        elif secret_ref is not None and known_secrets is not None and secret_ref not in known_secrets:
            problems.append(f"{at}.secret_ref: no secret named {secret_ref!r} in the secrets file")
        rate = d.get("rate", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 10_000:
            problems.append(f"{at}.rate: expected messages per second, a number > 0 and <= 10000")
            rate = 1.0
        burst = d.get("burst", 5)
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 10_000:
            problems.append(f"{at}.burst: expected an integer between 1 and 10000")
            burst = 5
        if channel in CHANNELS:
            problems.extend(f"{at}.config: {why}" for why in _channel_checks(str(channel), dict(config)))
        if name is None:
            continue
        if name in dests:
            problems.append(f"{at}.name: {name!r} is defined twice")
            continue
        dests[name] = Destination(name=name, channel=str(channel), config=dict(config), secret_ref=secret_ref,
                                  rate_per_second=float(rate), burst=int(burst))

    rules: list[Rule] = []
    raw_rules = doc.get("routes") if doc.get("routes") is not None else []
    if not isinstance(raw_rules, list):
        problems.append("routes: expected a list")
        raw_rules = []
    for i, r in enumerate(raw_rules):
        at = f"routes[{i}]"
        if not isinstance(r, Mapping):
            problems.append(f"{at}: expected a mapping")
            continue
        for k in r:
            if k not in ("name", "match", "to", "stop"):
                problems.append(f"{at}.{k}: unknown key (expected name, match, to, stop)")
        rname = r.get("name", f"#{i + 1}")
        if not isinstance(rname, str) or not rname:
            problems.append(f"{at}.name: expected a string")
            rname = f"#{i + 1}"
        match_raw = r.get("match") if r.get("match") is not None else {}
        match: dict[str, tuple[str, ...]] = {}
        if not isinstance(match_raw, Mapping):
            problems.append(f"{at}.match: expected a mapping of {', '.join(MATCH_FIELDS)}")
            match_raw = {}
        for f, v in match_raw.items():
            if f not in MATCH_FIELDS:
                problems.append(f"{at}.match.{f}: unknown field (expected {', '.join(MATCH_FIELDS)})")
                continue
            vals = _strings(v)
            if vals is None:
                problems.append(f"{at}.match.{f}: expected a string or a non-empty list of strings")
                continue
            match[f] = tuple(x.lower() if f in ("severity", "change") else x for x in vals)
        to = _strings(r.get("to"))
        if to is None:
            problems.append(f"{at}.to: expected a destination name or a list of them")
            to = []
        for n in to:
            if n not in dests and not any(isinstance(d, Mapping) and d.get("name") == n for d in raw_dests):
                problems.append(f"{at}.to: unknown destination {n!r}")
        stop = r.get("stop", False)
        if not isinstance(stop, bool):
            problems.append(f"{at}.stop: expected true or false")
            stop = False
        rules.append(Rule(rname, match, tuple(to), stop))

    default: list[str] = []
    if doc.get("default") is not None:
        d = _strings(doc.get("default"))
        if d is None:
            problems.append("default: expected a destination name or a list of them")
        else:
            default = d
            for n in d:
                if n not in dests and not any(isinstance(x, Mapping) and x.get("name") == n for x in raw_dests):
                    problems.append(f"default: unknown destination {n!r}")
    if problems:
        raise NotifyConfigError(source, problems)
    return NotifyConfig(dests, tuple(rules), tuple(default), source)
