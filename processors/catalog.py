"""The services catalog: which service (team, tier, runbook, routing key) an alert belongs to.

A YAML file (full example: tests/fixtures/catalog.example.yaml) with `version: 1`, optional
`defaults` (dedup, grouping, auto_resolve_seconds), `redact` (field paths redacted on every alert),
`sources` (named generic JSON mappings, see normalize/generic.py) and `services`: name (unique;
letters, digits, . _ -), team, tier (an integer 0 = most critical .. 4), runbook_url (http/https),
routing_key (optional, 32 characters: forward the service's alerts with it), matchers, grouping
(merged over defaults.grouping), dedup, auto_resolve_seconds, redact. It is checked by a JSON Schema
and then by meaning; every problem is reported at once as CatalogError(file, path, reason).

Words: the catalog speaks PagerDuty's language. `source` is PagerDuty's payload.source, the affected
host (Alert.origin); `input` is the tool the alert came through (Alert.source, e.g. "alertmanager").

Matchers: a service matches when ANY of its matchers matches; a matcher matches when ALL of its
conditions hold (keys: labels, source, routing_key, component, input). The one rule for values: a
value starting with "^" is a regular expression that must match the whole value; anything else is
compared exactly. Services are tried in file order; the first match wins.

Field paths: redact takes `labels.<name>`, `custom_details.<key>[.<key>...]` or one of summary,
source, component, group, class, client_url. grouping.fields takes only what identifies an alert:
`labels.<name>`, source, component, group, class, input (not summary, severity or custom_details,
which change while an alert lives). Keys cannot contain dots.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import jsonschema
import yaml

from .alert import Alert
from .errors import CatalogError
from .normalize.generic import GenericMapping
from .pii import SCHEMA as PII_SCHEMA
from .pii import PiiSpec
from .pii import check as check_pii

SCALAR_FIELDS = {"summary": "summary", "source": "origin", "component": "component", "group": "group",
                 "class": "class_", "client_url": "client_url"}  # fmt: skip
# Grouping uses identity only (fields that stay the same for every event of one alert).
GROUPING_FIELDS = {
    "source": "origin",
    "component": "component",
    "group": "group",
    "class": "class_",
    "input": "source",
}
GROUPING_MODES = ("none", "time_window", "fields", "correlate")
CATALOG_ENTRY = "@catalog"  # name of the published entry holding defaults, redact and sources
_ROUTING_KEY = re.compile(r"[A-Za-z0-9]{32}")
_MAX_SECONDS = 30 * 86400

_seconds = {"type": "integer", "minimum": 0, "maximum": _MAX_SECONDS}
_value = {"type": "string", "minLength": 1}
_grouping = {"type": "object", "additionalProperties": False, "properties": {
    "mode": {"enum": list(GROUPING_MODES)},
    "window_seconds": {"type": "integer", "minimum": 1, "maximum": _MAX_SECONDS},
    "fields": {"type": "array", "items": {"type": "string"}}}}  # fmt: skip
_dedup = {"type": "object", "additionalProperties": False, "properties": {"window_seconds": _seconds}}
_paths = {"type": "array", "items": {"type": "string"}}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["version", "services"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": 1},
        "defaults": {"type": "object", "additionalProperties": False, "properties": {
            "dedup": _dedup, "grouping": _grouping, "auto_resolve_seconds": _seconds}},
        "redact": _paths,
        "pii": PII_SCHEMA,  # pattern redaction for every service (processors/pii.py)
        "sources": {"type": "object", "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                    "additionalProperties": {"type": "object"}},
        "services": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "matchers"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"},
                "team": _value,
                "tier": {"type": "integer", "minimum": 0, "maximum": 4},
                "runbook_url": _value,
                "routing_key": {"type": "string"},
                "matchers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "minProperties": 1, "additionalProperties": False,
                    "properties": {
                        "labels": {"type": "object", "minProperties": 1, "additionalProperties": _value},
                        "source": _value, "routing_key": _value, "component": _value, "input": _value}}},
                "grouping": _grouping,
                "dedup": _dedup,
                "auto_resolve_seconds": _seconds,
                "redact": _paths,
                "pii": PII_SCHEMA}}},
    },
}  # fmt: skip


@dataclass(frozen=True)
class FieldPath:
    """`labels.email`, `custom_details.user.email`, `summary`: a place in an Alert."""

    root: str  # "labels", "custom_details" or a catalog scalar name
    keys: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return ".".join((self.root, *self.keys))

    @classmethod
    def parse(cls, text: str, *, grouping: bool = False) -> FieldPath | str:
        """The path, or the reason it is not one. Grouping paths: labels and identity fields only."""
        parts = text.split(".")
        if any(not p or p != p.strip() for p in parts):
            return f"malformed field path {text!r} (empty or padded segment)"
        root, keys = parts[0], tuple(parts[1:])
        scalars = GROUPING_FIELDS if grouping else SCALAR_FIELDS
        if root == "labels" and len(keys) == 1 or root == "custom_details" and keys and not grouping:
            return cls(root, keys)
        if root in scalars and not keys:
            return cls(root)
        return (f"unknown field path {text!r} (expected labels.<name>"
                f"{'' if grouping else ', custom_details.<key>...'} or one of {', '.join(scalars)})")  # fmt: skip

    @classmethod
    def of(cls, text: str, *, grouping: bool = False) -> FieldPath:
        """The path of an already checked text."""
        parsed = cls.parse(text, grouping=grouping)
        if isinstance(parsed, str):
            raise ValueError(parsed)  # noqa: TRY004 - a bad value, not a bad type
        return parsed


@dataclass(frozen=True)
class ValueRule:
    """An exact string, or (starting with "^") a regular expression matching the whole value."""

    text: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def of(cls, text: str) -> ValueRule:
        return cls(text, re.compile(text) if text.startswith("^") else None)

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        return bool(self.regex.fullmatch(value)) if self.regex is not None else value == self.text


@dataclass(frozen=True)
class Matcher:
    labels: tuple[tuple[str, ValueRule], ...] = ()
    conditions: tuple[tuple[str, ValueRule], ...] = ()  # (catalog word, rule) for alert fields

    _FIELDS: ClassVar[dict[str, str]] = {
        "source": "origin", "routing_key": "routing_key", "component": "component", "input": "source"}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Matcher:
        labels = tuple((k, ValueRule.of(v)) for k, v in (d.get("labels") or {}).items())
        return cls(labels, tuple((k, ValueRule.of(d[k])) for k in cls._FIELDS if k in d))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"labels": {k: r.text for k, r in self.labels}} if self.labels else {}
        return d | {k: r.text for k, r in self.conditions}

    def matches(self, alert: Alert) -> bool:
        return all(rule.matches(alert.labels.get(k)) for k, rule in self.labels) and all(
            rule.matches(getattr(alert, self._FIELDS[k])) for k, rule in self.conditions
        )


@dataclass(frozen=True)
class Grouping:
    mode: str = "none"
    window_seconds: int = 300
    fields: tuple[FieldPath, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "window_seconds": self.window_seconds,
            "fields": [f.text for f in self.fields],
        }


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    matchers: tuple[Matcher, ...]
    team: str | None = None
    tier: int | None = None
    runbook_url: str | None = None
    routing_key: str | None = None
    grouping: Grouping = Grouping()
    dedup_window_seconds: int = 0
    auto_resolve_seconds: int = 0
    redact: tuple[FieldPath, ...] = ()
    pii: PiiSpec | None = None  # the service's `pii:` section (processors/pii.py)

    def to_dict(self) -> dict[str, Any]:
        """The service with defaults applied, as a catalog `services[]` entry."""
        d: dict[str, Any] = {"name": self.name}
        for k in ("team", "tier", "runbook_url", "routing_key"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d | {
            "matchers": [m.to_dict() for m in self.matchers],
            "grouping": self.grouping.to_dict(),
            "dedup": {"window_seconds": self.dedup_window_seconds},
            "auto_resolve_seconds": self.auto_resolve_seconds,
            "redact": [p.text for p in self.redact],
        } | ({"pii": self.pii.to_dict()} if self.pii is not None else {})


@dataclass(frozen=True)
class ServiceMatch:
    spec: ServiceSpec
    matcher_index: int


@dataclass(frozen=True)
class Catalog:
    services: tuple[ServiceSpec, ...]
    redact: tuple[FieldPath, ...]
    sources: dict[str, GenericMapping]
    version: str
    defaults: ServiceSpec  # the `defaults:` section as a nameless service (grouping, dedup, auto-resolve)
    pii: PiiSpec | None = None  # the top-level `pii:` section (processors/pii.py)

    def find(self, alert: Alert) -> ServiceMatch | None:
        for spec in self.services:
            for i, matcher in enumerate(spec.matchers):
                if matcher.matches(alert):
                    return ServiceMatch(spec, i)
        return None

    def match(self, alert: Alert) -> ServiceSpec | None:
        found = self.find(alert)
        return found.spec if found else None

    def to_entries(self) -> list[dict[str, Any]]:
        """One JSON-able entry per service, plus one `@catalog` entry (defaults, redact, sources)."""
        head = {
            "name": CATALOG_ENTRY, "kind": "catalog", "position": -1, "catalog_version": self.version,
            "spec": {"defaults": _defaults_dict(self.defaults), "redact": [p.text for p in self.redact],
                     "sources": {k: m.to_dict() for k, m in self.sources.items()}},
        }  # fmt: skip
        if self.pii is not None:
            head["spec"]["pii"] = self.pii.to_dict()
        return [head] + [
            {"name": s.name, "kind": "service", "position": i, "catalog_version": self.version, "spec": s.to_dict()}
            for i, s in enumerate(self.services)
        ]  # fmt: skip

    @classmethod
    def from_entries(cls, entries: Iterable[Mapping[str, Any]]) -> Catalog:
        """Rebuild (and re-check) a catalog from published entries."""
        entries = list(entries)
        head = next((e.get("spec") or {} for e in entries if e.get("kind") == "catalog"), {})
        services = sorted(
            (e for e in entries if e.get("kind") == "service"), key=lambda e: e.get("position", 0)
        )
        doc = {"version": 1, "services": [e.get("spec") for e in services]}
        doc |= {k: head[k] for k in ("defaults", "redact", "sources", "pii") if k in head}
        versions = {e.get("catalog_version") for e in entries}
        version = versions.pop() if len(versions) == 1 else None
        return _build(
            doc, file="<entries>", version=str(version or _sha256(repr(sorted(map(repr, entries)))))
        )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _defaults_dict(d: ServiceSpec) -> dict[str, Any]:
    return {"dedup": {"window_seconds": d.dedup_window_seconds}, "grouping": d.grouping.to_dict(),
            "auto_resolve_seconds": d.auto_resolve_seconds}  # fmt: skip


EMPTY_CATALOG = Catalog(services=(), redact=(), sources={}, version=_sha256(""), defaults=ServiceSpec("", ()))


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""

    duplicates: list[tuple[str, str]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                where = f"line {key_node.start_mark.line + 1}"
                self.duplicates.append((where, f"duplicate key {key!r}"))
            seen.add(key if isinstance(key, (str, int, float, bool)) else id(key_node))
        return super().construct_mapping(node, deep)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or CatalogError.ROOT


def parse_catalog(text: str, *, file: str = "<string>") -> Catalog:
    try:
        loader = _Loader(text)  # the reader already rejects some characters
        loader.duplicates = []
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else CatalogError.ROOT
        raise CatalogError(file, where, f"YAML syntax error: {getattr(e, 'problem', None) or e}") from e
    if loader.duplicates:
        raise CatalogError(file, problems=loader.duplicates)
    return _build(doc, file=file, version=_sha256(text))


def load_catalog(path: str | Path) -> Catalog:
    """Read and check a catalog file (the only I/O in this module)."""
    return parse_catalog(Path(path).read_text(encoding="utf-8"), file=str(path))


# ---- checking and building -------------------------------------------------------------


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _check(doc: Any, file: str) -> list[tuple[str, str]]:
    """Every schema and semantic problem; the semantic checks look only at well-typed parts."""
    if doc is None:
        return [(CatalogError.ROOT, "the catalog is empty (expected version: 1 and services: [...])")]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = [(_path(e.absolute_path), e.message) for e in validator.iter_errors(doc)]
    doc = _dict(doc)
    problems += _check_paths(doc.get("redact"), "redact", grouping=False)
    problems += check_pii(doc.get("pii"), "pii")
    base_grouping = _dict(_dict(doc.get("defaults")).get("grouping"))
    problems += _check_grouping(base_grouping, {}, "defaults.grouping")
    for name, mapping in _dict(doc.get("sources")).items():
        if isinstance(mapping, dict):
            try:
                GenericMapping.from_dict(mapping, where=f"sources.{name}", name=str(name), file=file)
            except CatalogError as e:
                problems += e.problems
    first_seen: dict[str, int] = {}
    for i, svc in enumerate(_list(doc.get("services"))):
        if not isinstance(svc, dict):
            continue
        where = f"services[{i}]"
        svc_name = svc.get("name")
        if isinstance(svc_name, str) and svc_name in first_seen:
            reason = f"duplicate service name {svc_name!r} (first at services[{first_seen[svc_name]}])"
            problems.append((f"{where}.name", reason))
        if isinstance(svc_name, str):
            first_seen.setdefault(svc_name, i)
        problems += _check_routing_key(svc.get("routing_key"), f"{where}.routing_key")
        url = svc.get("runbook_url")
        if isinstance(url, str) and (
            urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc
        ):
            problems.append((f"{where}.runbook_url", f"expected an http(s) URL, got {url[:80]!r}"))
        for j, m in enumerate(_list(svc.get("matchers"))):
            problems += _check_matcher(_dict(m), f"{where}.matchers[{j}]")
        if isinstance(svc.get("grouping"), dict):
            problems += _check_grouping(svc["grouping"], base_grouping, f"{where}.grouping")
        problems += _check_paths(svc.get("redact"), f"{where}.redact", grouping=False)
        problems += check_pii(svc.get("pii"), f"{where}.pii")
    return problems


def _check_routing_key(value: object, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str) and not _ROUTING_KEY.fullmatch(value):
        return [(where, "expected a PagerDuty integration key: 32 letters or digits")]
    return []


def _check_matcher(m: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    values = [(f"{where}.labels.{k}", v) for k, v in _dict(m.get("labels")).items()]
    values += [(f"{where}.{k}", m[k]) for k in ("source", "routing_key", "component", "input") if k in m]
    for path, value in values:
        if isinstance(value, str) and value.startswith("^"):
            try:
                re.compile(value)
            except re.error as e:
                problems.append((path, f"invalid regular expression: {e}"))
    rk = m.get("routing_key")
    if isinstance(rk, str) and not rk.startswith("^"):
        problems += _check_routing_key(rk, f"{where}.routing_key")
    return problems


def _check_paths(paths: object, where: str, *, grouping: bool) -> list[tuple[str, str]]:
    if not isinstance(paths, list):
        return []
    return [(f"{where}[{i}]", r) for i, p in enumerate(paths)
            if isinstance(p, str) and isinstance(r := FieldPath.parse(p, grouping=grouping), str)]  # fmt: skip


def _check_grouping(g: Mapping[str, Any], base: Mapping[str, Any], where: str) -> list[tuple[str, str]]:
    problems = _check_paths(g.get("fields"), f"{where}.fields", grouping=True)
    merged = {**base, **g}
    if merged.get("mode") == "fields" and not merged.get("fields"):
        problems.append((f"{where}.fields", "grouping mode 'fields' needs at least one field"))
    return problems


def _build_grouping(g: Mapping[str, Any], base: Grouping) -> Grouping:
    fields = g.get("fields")
    return Grouping(
        mode=g.get("mode", base.mode),
        window_seconds=int(g.get("window_seconds", base.window_seconds)),
        fields=base.fields if fields is None else tuple(FieldPath.of(f, grouping=True) for f in fields),
    )


def _build(doc: Any, *, file: str, version: str) -> Catalog:
    problems = _check(doc, file)
    if problems:
        raise CatalogError(file, problems=problems)
    d = doc.get("defaults") or {}
    defaults = ServiceSpec(
        name="",
        matchers=(),
        grouping=_build_grouping(d.get("grouping") or {}, Grouping()),
        dedup_window_seconds=int((d.get("dedup") or {}).get("window_seconds", 0)),
        auto_resolve_seconds=int(d.get("auto_resolve_seconds", 0)),
    )
    services = tuple(
        ServiceSpec(
            name=s["name"],
            matchers=tuple(Matcher.from_dict(m) for m in s["matchers"]),
            team=s.get("team"),
            tier=None if s.get("tier") is None else int(s["tier"]),  # YAML 1.0 passes the schema
            runbook_url=s.get("runbook_url"),
            routing_key=s.get("routing_key"),
            grouping=_build_grouping(s.get("grouping") or {}, defaults.grouping),
            dedup_window_seconds=int(
                (s.get("dedup") or {}).get("window_seconds", defaults.dedup_window_seconds)
            ),
            auto_resolve_seconds=int(s.get("auto_resolve_seconds", defaults.auto_resolve_seconds)),
            redact=tuple(FieldPath.of(p) for p in s.get("redact") or ()),
            pii=PiiSpec.from_dict(s.get("pii")),
        )
        for s in doc["services"]
    )
    sources = {str(k): GenericMapping.from_dict(v, where=f"sources.{k}", name=str(k), file=file)
               for k, v in (doc.get("sources") or {}).items()}  # fmt: skip
    redact = tuple(FieldPath.of(p) for p in doc.get("redact") or ())
    return Catalog(services, redact, sources, version, defaults, pii=PiiSpec.from_dict(doc.get("pii")))
