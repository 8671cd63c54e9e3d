"""PII redaction by pattern: emails, phone numbers, card numbers, IBANs, tokens, before an alert leaves
the normalize/enrich stage (docs/compliance.md).

Catalog field paths (`redact:` in the catalog, processors/enrich.py) remove values whose place is known.
This module finds personal data wherever it is written: in the summary, the identity fields (source,
component, group, class), client_url, label values, every string inside custom_details and the links.
Each finding is replaced by `[REDACTED:<kind>]` and the field's path is appended to `Alert.redacted`.

Rules (kind: default):
  email: on        name@example.com, also URL-encoded (name%40example.com); local parts with & / = ?
                   (legal, but they delimit URL query strings) are cut at that character
  phone: on        international (+49 30 1234567, 8-15 digits) and North American ((555) 123-4567)
  credit_card: on  13-19 digits of a known card network prefix that pass the Luhn check
  iban: on         an IBAN (upper case, optionally grouped by 4) that passes the ISO 13616 mod-97 check
  bearer: on       the token after "Bearer" or an Authorization header value
  api_key: on      well-known key formats (AWS, GitHub, Slack, Stripe, Google, GitLab, npm) and the
                   value of key=value / "key": "value" pairs whose key names a secret (password, token, ...)
  jwt: on          three base64url parts whose first two start with `eyJ`
  ipv4: off        dotted quads (addresses are operational data: grouping and runbooks use them)
  ipv6: off        anything Python's ipaddress accepts as an IPv6 address

Configuration, in the catalog (checked with the rest of it, processors/catalog.py):

    pii:                               # every service
      enabled: true                    # false: no pattern redaction at all
      rules: {ipv4: true, phone: false}
      patterns: {employee_id: "EMP-[0-9]{6}"}   # extra kinds: the whole match is replaced
    services:
      - name: lab
        pii: {enabled: false}          # per service: enabled, rules and patterns override/add

What is not touched: the dedup_key (the alert's identity: the resolve must find the trigger, so it
is never rewritten), the routing key, numbers that are JSON numbers rather than strings, and JSON keys.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .alert import Alert, Link

DEFAULT_RULES: dict[str, bool] = {
    "email": True,
    "phone": True,
    "credit_card": True,
    "iban": True,
    "bearer": True,
    "api_key": True,
    "jwt": True,
    "ipv4": False,
    "ipv6": False,
}
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MIN_LEN = 6  # no rule can match a shorter text ("a@b.io" is 6)
# alert attribute -> name in Alert.redacted (the catalog's words, as processors/catalog.py SCALAR_FIELDS)
_SCALARS = (("summary", "summary"), ("origin", "source"), ("component", "component"), ("group", "group"),
            ("class_", "class"), ("client_url", "client_url"))  # fmt: skip


def token(kind: str) -> str:
    return f"[REDACTED:{kind}]"


# ---- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiiSpec:
    """One `pii:` section of the catalog (global or a service's). None fields inherit."""

    enabled: bool | None = None
    rules: tuple[tuple[str, bool], ...] = ()
    patterns: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PiiSpec | None:
        if not d:
            return None
        return cls(enabled=d.get("enabled"), rules=tuple(sorted((d.get("rules") or {}).items())),
                   patterns=tuple(sorted((d.get("patterns") or {}).items())))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {} if self.enabled is None else {"enabled": self.enabled}
        if self.rules:
            d["rules"] = dict(self.rules)
        if self.patterns:
            d["patterns"] = dict(self.patterns)
        return d


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "rules": {"type": "object", "propertyNames": {"enum": list(DEFAULT_RULES)},
                  "additionalProperties": {"type": "boolean"}},
        "patterns": {"type": "object", "propertyNames": {"pattern": _KIND.pattern},
                     "additionalProperties": {"type": "string", "minLength": 1}},
    },
}  # fmt: skip


def check(d: object, where: str) -> list[tuple[str, str]]:
    """Problems the JSON Schema cannot see: patterns that do not compile, or match the empty text."""
    problems: list[tuple[str, str]] = []
    patterns = d.get("patterns") if isinstance(d, dict) else None
    if not isinstance(patterns, dict):
        return problems
    for name, text in patterns.items():
        if not isinstance(text, str):
            continue
        if name in DEFAULT_RULES:
            problems.append((f"{where}.patterns.{name}", f"{name!r} is a built-in rule: switch it in rules"))
            continue
        try:
            rx = re.compile(text)
        except re.error as e:
            problems.append((f"{where}.patterns.{name}", f"invalid regular expression: {e}"))
            continue
        if rx.fullmatch(""):
            problems.append((f"{where}.patterns.{name}", "the pattern matches the empty text"))
    return problems


# ---- validators: return the length of the longest valid prefix of a candidate (0 = none) -----------


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _card_network(d: str) -> bool:
    n = len(d)
    two, three, four, six = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    return ((d[0] == "4" and n in (13, 16, 19))                                  # Visa
            or ((51 <= two <= 55 or 2221 <= four <= 2720) and n == 16)           # Mastercard
            or (two in (34, 37) and n == 15)                                     # Amex
            or ((four == 6011 or 644 <= three <= 649 or two == 65 or 622126 <= six <= 622925) and 16 <= n <= 19)
            or ((300 <= three <= 305 or two in (36, 38, 39)) and 14 <= n <= 19)  # Diners
            or (3528 <= four <= 3589 and 16 <= n <= 19)                          # JCB
            or (two == 62 and 16 <= n <= 19))  # fmt: skip                        # UnionPay


def _card_prefix(text: str) -> int:
    ends = [i + 1 for i, ch in enumerate(text) if ch.isdigit()]  # prefix lengths ending on a digit
    for count in range(min(19, len(ends)), 12, -1):
        end = ends[count - 1]
        digits = "".join(ch for ch in text[:end] if ch.isdigit())
        if _card_network(digits) and luhn_ok(digits):
            return end
    return 0


def iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or not compact[:2].isalpha() or not compact[2:4].isdigit():
        return False
    moved = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in moved))
    except ValueError:
        return False
    return number % 97 == 1


def _iban_prefix(text: str) -> int:
    ends = [m.end() for m in re.finditer(r"[A-Z0-9]+", text)]  # an IBAN ends where a group ends
    compact_lens = ends[::-1]
    for end in compact_lens:
        if iban_ok(text[:end].replace(" ", "")):
            return end
    # an ungrouped IBAN followed by more letters and digits: try each length
    compact = text.replace(" ", "")
    if " " not in text:
        for n in range(min(34, len(compact)), 14, -1):
            if iban_ok(compact[:n]):
                return n
    return 0


def _phone_prefix(text: str) -> int:
    return len(text) if 8 <= sum(ch.isdigit() for ch in text) <= 15 else 0


def _ipv6_prefix(text: str) -> int:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return 0
    return len(text) if sum(ch not in ":" for ch in text) >= 2 else 0


def _secret_value(text: str) -> int:
    return len(text) if any(ch.isdigit() for ch in text) or len(text) >= 12 else 0


# ---- rules ----------------------------------------------------------------------------------------


_SHAPE = bytes(ord("9") if chr(b).isdigit() else ord("A") if 65 <= b <= 90 else b for b in range(256))


class Probe:
    """Cheap views of a text for the rules' hints: lower case, and a shape (digits -> 9, A-Z -> A)."""

    __slots__ = ("text", "_lower", "_shape")

    def __init__(self, text: str) -> None:
        self.text = text
        self._lower: str | None = None
        self._shape: bytes | None = None

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = self.text.lower()
        return self._lower

    @property
    def shape(self) -> bytes:
        if self._shape is None:
            self._shape = self.text.encode("utf-8", "replace").translate(_SHAPE)
        return self._shape


@dataclass(frozen=True)
class Rule:
    kind: str
    regex: re.Pattern[str]
    # A necessary condition, much cheaper than the regex (Python's re tries every position): False means
    # the regex cannot match. Measured on a 170-character alert: 0.1-0.6 us against 5-60 us per regex.
    hint: Callable[[Probe], bool] | None = None
    valid: Callable[[str], int] | None = None  # longest valid prefix of the (secret part of the) match
    secret_group: str | None = None  # replace only this group, keep the rest of the match

    def possible(self, probe: Probe) -> bool:
        return (self.hint is None or self.hint(probe)) and self.regex.search(probe.text) is not None

    def apply(self, text: str) -> str:
        return self.regex.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        whole = m.group(0)
        start, end = (m.span(self.secret_group) if self.secret_group else m.span())
        start, end = start - m.start(), end - m.start()
        if self.valid is not None:
            n = self.valid(whole[start:end])
            if n == 0:
                return whole
            end = start + n
        return whole[:start] + token(self.kind) + whole[end:]


def _secret_name(p: Probe) -> bool:
    low = p.lower
    return "key" in low or "token" in low or "secret" in low or "passw" in low or "pwd" in low


def _card_digits(p: Probe) -> bool:
    return b"9999999999999" in p.shape.replace(b" ", b"").replace(b"-", b"")


def _nanp(p: Probe) -> bool:
    return b"999-9999" in p.shape or b"999.9999" in p.shape


_SECRET_NAMES = (r"api[_-]?key|apikey|api[_-]?token|access[_-]?token|auth[_-]?token|refresh[_-]?token|"
                 r"client[_-]?secret|secret[_-]?key|private[_-]?key|secret|password|passwd|pwd|token")
_SECRET_KEY = re.compile(rf"(?i)(?:^|[_.-])(?:{_SECRET_NAMES}|authorization)$")

BUILTIN: dict[str, tuple[Rule, ...]] = {
    "jwt": (Rule("jwt", re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
                 hint=lambda p: "eyJ" in p.text),),
    "bearer": (Rule("bearer", re.compile(r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9\-._~+/]{8,}=*)"),
                    hint=lambda p: "bearer" in p.lower, secret_group="s"),
               Rule("bearer", re.compile(r"(?i)\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:basic|token|digest)\s+)?"
                                         r"(?P<s>[^\s\"'\[]{8,})"),
                    hint=lambda p: "authorization" in p.lower, secret_group="s")),
    "api_key": (*(Rule("api_key", re.compile(rx), hint=lambda p, lit=lit: lit in p.text) for lit, rx in (
        # (literal the key starts with, the key): one rule each, so that re can scan for the literal
        ("AKIA", r"AKIA[0-9A-Z]{16}(?![0-9A-Za-z])"), ("ASIA", r"ASIA[0-9A-Z]{16}(?![0-9A-Za-z])"),  # AWS
        ("gh", r"gh[pousr]_[A-Za-z0-9]{36,}"), ("github_pat_", r"github_pat_[A-Za-z0-9_]{40,}"),  # GitHub
        ("xox", r"xox[abposr]-[A-Za-z0-9-]{10,}"),  # Slack
        ("k_live_", r"[sr]k_live_[0-9A-Za-z]{16,}"), ("k_test_", r"[sr]k_test_[0-9A-Za-z]{16,}"),  # Stripe
        ("AIza", r"AIza[0-9A-Za-z_-]{35}"), ("glpat-", r"glpat-[0-9A-Za-z_-]{20,}"),  # Google, GitLab
        ("npm_", r"npm_[A-Za-z0-9]{36}"), ("sk-", r"(?<![\w-])sk-[A-Za-z0-9_-]{20,}"))),  # npm, OpenAI-style
        Rule("api_key", re.compile(rf"(?i)(?<![\w])(?:{_SECRET_NAMES})[\"']?\s*[:=]\s*[\"']?(?P<s>[^\s\"'&,;{{}}\[\]]{{6,}})"),
             hint=_secret_name, valid=_secret_value, secret_group="s")),
    "email": (Rule("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9.!#$%'*+^_`{|}~-]{1,64}(?:@|%40)[A-Za-z0-9-]{1,63}"
                                       r"(?:\.[A-Za-z0-9-]{1,63})*\.(?:[A-Za-z]{2,24}|[Xx][Nn]--[A-Za-z0-9-]{1,59})(?![\w-])"),
                    hint=lambda p: "@" in p.text or "%40" in p.text),),
    "iban": (Rule("iban", re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"
                                     r"(?![a-z0-9])"), hint=lambda p: b"AA99" in p.shape, valid=_iban_prefix),),
    "credit_card": (Rule("credit_card", re.compile(r"(?<![\w.-])(?:\d[ -]?){12,18}\d(?![\w])"),
                         hint=_card_digits, valid=_card_prefix),),
    "phone": (Rule("phone", re.compile(r"(?<![\w+])\+[1-9]\d{0,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w]|\.\d)"),
                   hint=lambda p: b"+9" in p.shape, valid=_phone_prefix),
              Rule("phone", re.compile(r"(?<![\w.+/-])(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w]|[.-]\d)"),
                   hint=_nanp)),
    "ipv6": (Rule("ipv6", re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{2,39}(?![\w:])"),
                  hint=lambda p: "::" in p.text or p.text.count(":") >= 7, valid=_ipv6_prefix),),
    "ipv4": (Rule("ipv4", re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                                     r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"), hint=lambda p: b"9.9" in p.shape),),
}
# Most specific first: a token is gone before the email rule sees the text around it.
ORDER = ("jwt", "bearer", "api_key", "email", "iban", "credit_card", "phone", "ipv6", "ipv4")
if not set(ORDER) == set(DEFAULT_RULES) == set(BUILTIN):  # pragma: no cover - a module invariant
    raise RuntimeError("pii: ORDER, DEFAULT_RULES and BUILTIN name different rules")


@dataclass(frozen=True)
class Redactor:
    rules: tuple[Rule, ...]
    secret_keys: bool  # api_key on: values under keys named like secrets are redacted whole

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.kind for r in self.rules))

    def text(self, value: str) -> str:
        if len(value) < _MIN_LEN:
            return value
        probe = Probe(value)
        for rule in self.rules:  # replacements add no digits, "@" or tokens: the probe stays valid
            if rule.hint is None or rule.hint(probe):
                value = rule.apply(value)  # sub() searches anyway: no separate search first
        return value

    def only_possible_in(self, text: str) -> Redactor:
        """The rules that can match somewhere in `text` (all of an alert's texts, joined)."""
        probe = Probe(text)
        return Redactor(tuple(r for r in self.rules if r.possible(probe)), self.secret_keys)

    def value_under(self, key: str, value: str) -> str:
        """A string found under a JSON key or label name."""
        if self.secret_keys and len(value) >= _MIN_LEN and _SECRET_KEY.search(key) and not value.startswith("[REDACTED"):
            return token("api_key")
        return self.text(value)


NO_REDACTION = Redactor((), False)


@lru_cache(maxsize=256)
def redactor_for(global_spec: PiiSpec | None, service_spec: PiiSpec | None) -> Redactor:
    """The rules in force for one service: code defaults < catalog `pii` < the service's `pii`."""
    enabled, switches, patterns = True, dict(DEFAULT_RULES), {}
    for spec in (global_spec, service_spec):
        if spec is None:
            continue
        if spec.enabled is not None:
            enabled = spec.enabled
        switches.update(spec.rules)
        patterns.update(spec.patterns)
    if not enabled:
        return NO_REDACTION
    rules: list[Rule] = []
    for kind in ORDER:
        if switches.get(kind):
            rules.extend(BUILTIN[kind])
        if kind == "api_key":  # custom patterns right after the tokens, before the generic rules
            rules.extend(Rule(name, re.compile(rx)) for name, rx in sorted(patterns.items()))
    return Redactor(tuple(rules), secret_keys=bool(switches.get("api_key")))


# ---- applying it to an alert -----------------------------------------------------------------------


def _strings(value: Any, out: list[str], keys: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            keys.append(str(k))
            _strings(v, out, keys)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out, keys)


def _walk(value: Any, path: str, r: Redactor, hits: list[str], key: str = "") -> Any:
    if isinstance(value, str):
        new = r.value_under(key, value) if key else r.text(value)
        if new != value:
            hits.append(path)
        return new
    if isinstance(value, dict):
        return {k: _walk(v, f"{path}.{k}", r, hits, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, f"{path}.{i}", r, hits, key) for i, v in enumerate(value)]
    return value


def redact_pii(alert: Alert, r: Redactor) -> Alert:
    """`alert` with every pattern finding replaced; the alert itself when nothing was found.

    One search per rule over all of the alert's texts joined by newlines (a boundary for every rule)
    picks the rules that can match; only those run field by field. A rule that matches inside one
    field also matches in the joined text, so the shortcut never misses a finding.
    """
    if not r.rules and not r.secret_keys:
        return alert
    details: Any = None
    if alert.custom_details_json not in ("{}", "", "null"):
        try:
            details = json.loads(alert.custom_details_json)
        except ValueError:
            details = None
    texts = [v for attr, _ in _SCALARS if isinstance(v := getattr(alert, attr), str)]
    texts += [v for v in alert.labels.values() if isinstance(v, str)]
    texts += [t for x in alert.links for t in (x.href, x.text) if t]
    keys = list(alert.labels)
    _strings(details, texts, keys)
    active = r.only_possible_in("\n".join(texts))
    secret_keys = r.secret_keys and any(_SECRET_KEY.search(k) for k in keys)
    if not active.rules and not secret_keys:
        return alert
    r = Redactor(active.rules, secret_keys)
    hits: list[str] = []
    changes: dict[str, Any] = {}
    for attr, name in _SCALARS:
        value = getattr(alert, attr)
        if isinstance(value, str) and (new := r.text(value)) != value:
            changes[attr] = new
            hits.append(name)
    labels = {k: r.value_under(k, v) if isinstance(v, str) else v for k, v in alert.labels.items()}
    if labels != alert.labels:
        changes["labels"] = labels
        hits.extend(f"labels.{k}" for k, v in labels.items() if v != alert.labels[k])
    if details is not None:
        found: list[str] = []
        new_details = _walk(details, "custom_details", r, found)
        if found:
            changes["custom_details_json"] = json.dumps(new_details, ensure_ascii=False, separators=(",", ":"))
            hits.extend(found)
    if alert.links:
        links = tuple(Link(r.text(x.href), None if x.text is None else r.text(x.text)) for x in alert.links)
        if links != alert.links:
            changes["links"] = links
            hits.append("links")
    if not hits:
        return alert
    redacted = alert.redacted + tuple(p for p in dict.fromkeys(hits) if p not in alert.redacted)
    return alert.with_(redacted=redacted, **changes)
