"""Generic JSON webhooks, read through a declarative mapping of Jinja2 templates.

A mapping comes from the services catalog (`sources:`) or a YAML file, e.g.

    dedup_key: "{{ item.id }}"
    summary:   "{{ item.check }} is {{ item.state }} on {{ item.host }}"
    severity:  "{{ 'critical' if item.state == 'down' else 'warning' }}"
    source:    "{{ item.host }}"
    resolve_when: "{{ item.state == 'up' }}"
    items: "body.checks"          # optional: one alert per element of this list

Templates see `body` (the parsed JSON), `item` (the element, or the body without `items`) and
`index`. Required templates (dedup_key, summary, severity, source) fail on a missing value;
optional ones render a missing value as empty, and empty means "not set".

Why a sandbox: the templates come from configuration and run against bodies from the network.
The sandbox keeps a template from reaching Python internals (`__class__`, `__globals__`, ...),
the immutable variant stops it from mutating the body seen by the next template, and the size
limits below keep one template or one body from producing unbounded text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..alert import SEVERITIES, Action, Alert, Severity
from ..errors import CatalogError, InvalidInput
from .body import dump_details, parse_json, parse_timestamp_ms

REQUIRED = ("dedup_key", "summary", "severity", "source")
OPTIONAL = ("component", "group", "class", "routing_key", "resolve_when", "acknowledge_when", "timestamp")
MAX_TEMPLATE_CHARS = 4096
MAX_RENDERED_CHARS = 16384
MAX_ITEMS = 1000


@functools.cache
def _environment(strict: bool) -> ImmutableSandboxedEnvironment:
    undefined = jinja2.StrictUndefined if strict else jinja2.ChainableUndefined
    return ImmutableSandboxedEnvironment(undefined=undefined, autoescape=False, keep_trailing_newline=False)


def _compile(name: str, text: object, problems: list[tuple[str, str]]) -> jinja2.Template | None:
    if not isinstance(text, str):
        problems.append((name, "expected a template string (quote it in YAML)"))
        return None
    if len(text) > MAX_TEMPLATE_CHARS:
        problems.append((name, f"template longer than {MAX_TEMPLATE_CHARS} characters"))
        return None
    try:
        return _environment(name in REQUIRED).from_string(text)
    except jinja2.TemplateSyntaxError as e:
        problems.append((name, f"template syntax error: {e.message} (line {e.lineno})"))
        return None


@dataclass(frozen=True)
class GenericMapping:
    """How to read one kind of generic JSON body. Build it with `from_dict` / `from_yaml`."""

    name: str
    templates: tuple[tuple[str, str], ...]  # (field, template source), config order
    labels: tuple[tuple[str, str], ...] = ()  # (label name, template source)
    items: str | None = None
    _compiled: Mapping[str, jinja2.Template] = field(default_factory=dict, repr=False, compare=False)
    _label_templates: Mapping[str, jinja2.Template] = field(default_factory=dict, repr=False, compare=False)
    _items: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(
        cls, d: object, *, where: str, name: str | None = None, file: str = "<mapping>"
    ) -> GenericMapping:
        """Validate and compile every template now; CatalogError lists every problem under `where`."""
        problems: list[tuple[str, str]] = []
        if not isinstance(d, Mapping):
            raise CatalogError(file, where, "expected a mapping of field name to template")
        known = REQUIRED + OPTIONAL + ("labels", "items")
        problems += [
            (str(k), f"unknown field (expected one of: {', '.join(known)})") for k in d if k not in known
        ]
        problems += [(k, "required template is missing") for k in REQUIRED if k not in d]
        compiled: dict[str, jinja2.Template] = {}
        for key in REQUIRED + OPTIONAL:
            if key in d and (t := _compile(key, d[key], problems)) is not None:
                compiled[key] = t
        label_templates: dict[str, jinja2.Template] = {}
        labels = d.get("labels", {})
        if not isinstance(labels, Mapping):
            problems.append(("labels", "expected a mapping of label name to template"))
        else:
            for k, v in labels.items():
                if (t := _compile(f"labels.{k}", v, problems)) is not None:
                    label_templates[str(k)] = t
        items_fn = None
        items = d.get("items")
        if items is not None:
            if not isinstance(items, str) or not items.strip() or len(items) > MAX_TEMPLATE_CHARS:
                problems.append(("items", "expected an expression such as body.alerts"))
            else:
                try:
                    items_fn = _environment(True).compile_expression(items, undefined_to_none=False)
                except jinja2.TemplateSyntaxError as e:
                    problems.append(("items", f"expression syntax error: {e.message}"))
        if problems:
            raise CatalogError(file, problems=[(f"{where}.{p}", r) for p, r in problems])
        return cls(
            name=name or where.rsplit(".", 1)[-1],
            templates=tuple((k, cast(str, d[k])) for k in REQUIRED + OPTIONAL if k in d),
            labels=tuple((str(k), cast(str, v)) for k, v in labels.items()),
            items=items,
            _compiled=compiled,
            _label_templates=label_templates,
            _items=items_fn,
        )

    @classmethod
    def from_yaml(cls, text: str, *, name: str, file: str = "<string>") -> GenericMapping:
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CatalogError(file, name, f"not valid YAML: {e}") from e
        return cls.from_dict(d, where=name, name=name, file=file)

    def to_dict(self) -> dict[str, Any]:
        """The configuration this mapping was built from (for publishing)."""
        d: dict[str, Any] = dict(self.templates)
        if self.labels:
            d["labels"] = dict(self.labels)
        if self.items is not None:
            d["items"] = self.items
        return d


def _render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """Render with a cap on the output size."""
    out: list[str] = []
    size = 0
    for chunk in template.generate(**context):
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise ValueError(f"rendered text longer than {MAX_RENDERED_CHARS} characters")
        out.append(chunk)
    return "".join(out).strip()


def _flag(text: str | None) -> bool:
    value = (text or "").lower()
    if value in ("true", "false", ""):
        return value == "true"
    raise ValueError(f'expected "true" or "false", got {value[:40]!r}')


def _epoch_seconds_ms(text: str) -> int | None:
    try:
        ms = int(float(text) * 1000)
    except (ValueError, OverflowError):
        return None
    return ms if _MIN_MS <= ms <= _MAX_MS else None


_MIN_MS, _MAX_MS = -62135596800000, 253402300799999  # years 1 to 9999


def _one(
    mapping: GenericMapping, context: Mapping[str, Any], where: str, errors: list[str]
) -> dict[str, Any] | None:
    """The rendered fields of one alert, or None (with errors added)."""
    values: dict[str, str | None] = {}
    before = len(errors)
    for key, template in mapping._compiled.items():
        try:
            text = _render(template, context)
        except Exception as e:  # noqa: BLE001 - a template may raise anything (UndefinedError, TypeError, ...)
            errors.append(f"{where}{key}: {type(e).__name__}: {e}")
            continue
        if key in REQUIRED and not text:
            errors.append(f"{where}{key}: rendered empty")
        values[key] = text or None
    labels: dict[str, str] = {}
    for label, template in mapping._label_templates.items():
        try:
            if text := _render(template, context):
                labels[label] = text
        except Exception as e:  # noqa: BLE001 - as above
            errors.append(f"{where}labels.{label}: {type(e).__name__}: {e}")
    out: dict[str, Any] = {"labels": labels, **values}
    rendered_severity = values.get("severity") or ""
    severity = rendered_severity.lower()
    if rendered_severity and severity not in SEVERITIES:
        errors.append(f"{where}severity: {rendered_severity[:40]!r} is not one of {', '.join(SEVERITIES)}")
    out["severity"] = severity
    for key in ("resolve_when", "acknowledge_when"):
        try:
            out[key] = _flag(values.get(key))
        except ValueError as e:
            errors.append(f"{where}{key}: {e}")
    stamp = values.get("timestamp")
    out["timestamp"] = None
    if stamp:
        out["timestamp"] = parse_timestamp_ms(stamp)
        if out["timestamp"] is None:
            out["timestamp"] = _epoch_seconds_ms(stamp)
        if out["timestamp"] is None:
            errors.append(f"{where}timestamp: {stamp[:40]!r} is neither ISO 8601 nor epoch seconds")
    return None if len(errors) > before else out


def normalize_generic(
    body: bytes,
    mapping: GenericMapping,
    *,
    source: str,
    raw_id: str,
    received_at_ms: int,
    attributes: Mapping[str, str],
    default_routing_key: str,
) -> list[Alert]:
    obj, errors = parse_json(body)
    if errors:
        raise InvalidInput(errors)
    items: list[Any] = [obj]
    if mapping._items is not None:
        try:
            selected = mapping._items(body=obj)
        except Exception as e:
            raise InvalidInput([f"items: {type(e).__name__}: {e}"]) from e
        if isinstance(selected, jinja2.Undefined):
            raise InvalidInput([f"items: {mapping.items!r} selects nothing in this body"])
        if not isinstance(selected, list):
            raise InvalidInput([f"items: expected a list, got {type(selected).__name__}"])
        if len(selected) > MAX_ITEMS:
            raise InvalidInput([f"items: {len(selected)} elements, at most {MAX_ITEMS} allowed"])
        items = selected
    rendered = []
    for i, item in enumerate(items):
        where = f"items[{i}]." if mapping._items is not None else ""
        rendered.append(_one(mapping, {"body": obj, "item": item, "index": i}, where, errors))
    if errors:
        raise InvalidInput(errors)
    out: list[Alert] = []
    for i, (item, r) in enumerate(zip(items, rendered)):
        assert r is not None
        action: Action = (
            "resolve" if r["resolve_when"] else "acknowledge" if r["acknowledge_when"] else "trigger"
        )
        out.append(
            Alert(
                id=f"{raw_id}:{i}",
                raw_id=raw_id,
                source=source,
                action=action,
                routing_key=attributes.get("routing_key") or r.get("routing_key") or default_routing_key,
                dedup_key=r["dedup_key"],
                summary=r["summary"],
                severity=cast(Severity, r["severity"]),
                origin=r["source"],
                event_time=received_at_ms if r["timestamp"] is None else r["timestamp"],
                received_at=received_at_ms,
                component=r.get("component"),
                group=r.get("group"),
                class_=r.get("class"),
                labels=r["labels"],
                custom_details_json=dump_details(item if isinstance(item, dict) else {"item": item}),
            )
        )
    return out
