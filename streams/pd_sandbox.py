"""Local stand-in for PagerDuty's Events API v2 (events.pagerduty.com).

Request bodies are validated against the official OpenAPI 3.0 spec (loaded at runtime from the
shared contracts directory) plus the limits the developer docs state but the spec does not encode.
Responses copy PagerDuty's envelopes. Every request is recorded, an alert model applies PagerDuty's
dedup rules, and faults (429 / 5xx / slow / per-key rate limiting) can be injected over HTTP or from
Python for retry and ordering tests.

Endpoints:
  POST /v2/enqueue, POST /v2/change/enqueue           PagerDuty-compatible
  GET  /sandbox/requests[?routing_key=&dedup_key=]    request log
  GET  /sandbox/alerts                                alert model + per-key event sequences
  GET  /sandbox/stats                                 counters, max 1-s rate per key, anomalies
  GET|POST /sandbox/faults                            read / add fault injection
  POST /sandbox/reset                                 wipe all state (faults included)
  GET  /healthz

The same app also serves the REST API v2 stand-in of streams/pd_rest_sandbox.py (mounted by
make_app through `add_rest_routes`): /services, /escalation_policies, /schedules, /oncalls, /users,
/teams, /incidents (+ notes, acknowledge/resolve/reassign), /webhook_subscriptions, /audit/records,
validated against the official REST OpenAPI spec, with its own controls under /sandbox/rest/
(requests, faults, seed, tokens, reset). It is skipped with a warning if the REST spec is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from aiohttp import web

try:  # preferred: the OpenAPI 3.0 dialect (nullable etc.)
    from openapi_schema_validator import OAS30Validator as _SchemaValidator
except ImportError:  # pragma: no cover - the spec's request schemas only use draft-4 keywords
    from jsonschema import Draft4Validator as _SchemaValidator

log = logging.getLogger("pagerstream.pd_sandbox")

CONTRACTS_ENV = "PAGERSTREAM_CONTRACTS_DIR"
SPEC_RELPATH = Path("pagerduty/openapi/events-api-v2.openapiv3.json")
# operationId in the official spec -> event kind handled here
OPERATIONS = {"createV2Event": "alert", "createChangeEvent": "change"}

# "Events API payloads are limited to 512 KB". We use 512000 bytes, the cap Alertmanager (and
# Grafana) enforce before sending, rather than 524288.
MAX_BODY_BYTES = 512_000
MAX_SUMMARY_CHARS = 1024
MAX_DEDUP_KEY_CHARS = 255
ROUTING_KEY_CHARS = 32
SEVERITIES = ("critical", "error", "warning", "info")
ALERT_ACTIONS = ("trigger", "acknowledge", "resolve")
# hard ceiling on what we buffer at all; anything up to it is still answered with a 400 envelope
HARD_BODY_CAP = 16 * 1024 * 1024

OK_MESSAGE = "Event processed"
INVALID_STATUS = "invalid event"
INVALID_MESSAGE = "Event object is invalid"
THROTTLE_BODY = {
    "status": "throttle exceeded",
    "message": "Requests for this service are arriving too quickly.  Please retry later.",
    "errors": ["Enhance Your Calm."],
}
SERVER_ERROR_STATUS = "Unrecognized object"
SERVER_ERROR_MESSAGE = "Event object format is unrecognized"


class SpecNotFoundError(FileNotFoundError):
    pass


# --------------------------------------------------------------------------------------------
# spec loading and validation
# --------------------------------------------------------------------------------------------

def default_contracts_dir() -> Path:
    env = os.environ.get(CONTRACTS_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parent.parent  # streams/ -> repo root
    return (repo_root / ".." / "shared" / "contracts").resolve()


def _spec_file(path: str | os.PathLike | None) -> Path:
    if path is None:
        return default_contracts_dir() / SPEC_RELPATH
    p = Path(path).expanduser()
    return p / SPEC_RELPATH if p.is_dir() else p


def load_events_spec(path: str | os.PathLike | None = None) -> dict:
    """Load the official Events API v2 OpenAPI document.

    `path` may be the spec file itself or a contracts directory; default is
    $PAGERSTREAM_CONTRACTS_DIR or <repo root>/../shared/contracts.
    """
    f = _spec_file(path)
    if not f.is_file():
        raise SpecNotFoundError(
            f"PagerDuty Events API v2 OpenAPI spec not found at {f}. Set {CONTRACTS_ENV} to the shared "
            f"contracts directory (the one containing {SPEC_RELPATH}) or pass spec_path explicitly."
        )
    with f.open("r", encoding="utf-8") as fh:
        spec = json.load(fh)
    if not isinstance(spec, dict) or "paths" not in spec:
        raise ValueError(f"{f} does not look like an OpenAPI document (no 'paths')")
    return spec


def _resolve_pointer(root: dict, ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve_refs(node: Any, root: dict, _stack: tuple[str, ...] = ()) -> Any:
    """Deep copy of `node` with every local {"$ref": ...} inlined (the spec has no cycles)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref in _stack:
                raise ValueError(f"recursive $ref {ref!r} cannot be inlined")
            return resolve_refs(_resolve_pointer(root, ref), root, _stack + (ref,))
        return {k: resolve_refs(v, root, _stack) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_refs(v, root, _stack) for v in node]
    return copy.deepcopy(node)


def _server_prefix(spec: dict) -> str:
    servers = spec.get("servers") or [{"url": "https://events.pagerduty.com/v2"}]
    return urlparse(servers[0].get("url", "")).path.rstrip("/")


def events_routes(spec: dict) -> dict[str, tuple[str, dict]]:
    """{http path: (kind, resolved request-body schema)} for the two enqueue operations."""
    prefix = _server_prefix(spec)
    routes: dict[str, tuple[str, dict]] = {}
    for spec_path, item in spec.get("paths", {}).items():
        op = (item or {}).get("post") or {}
        kind = OPERATIONS.get(op.get("operationId"))
        if not kind:
            continue
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        routes[prefix + spec_path] = (kind, resolve_refs(schema, spec))
    missing = set(OPERATIONS.values()) - {k for k, _ in routes.values()}
    if missing:
        raise ValueError(f"Events API spec lacks operations for: {sorted(missing)}")
    return routes


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _path_str(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _format_schema_error(err: Any) -> list[str]:
    path = _path_str(err.absolute_path)
    where = f"'{path}'" if path else "Event object"
    kw = err.validator
    if kw == "required":
        inst = err.instance if isinstance(err.instance, dict) else {}
        prefix = f"{path}." if path else ""
        return [f"'{prefix}{p}' is missing or blank" for p in err.validator_value if p not in inst]
    if kw == "enum":
        allowed = ", ".join(map(str, err.validator_value))
        return [f"{where} must be one of {allowed} (got {err.instance!r:.80})"]
    if kw == "type":
        return [f"{where} must be of type {err.validator_value} (got {_json_type(err.instance)})"]
    return [f"{where}: {err.message:.200}"]


class EventRequestValidator:
    """Validates Events API v2 request bodies: official schema + documented-only limits."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.routes = events_routes(spec)
        self._validators = {}
        for _path, (kind, schema) in self.routes.items():
            _SchemaValidator.check_schema(schema)
            self._validators[kind] = _SchemaValidator(schema)
            props = schema.get("properties", {})
            # the docs' enums are enforced through the spec; warn if the two ever drift apart
            drift = {
                "event_action": (props.get("event_action", {}).get("enum"), ALERT_ACTIONS),
                "payload.severity": (
                    props.get("payload", {}).get("properties", {}).get("severity", {}).get("enum"), SEVERITIES
                ),
            }
            for field, (got, documented) in drift.items():
                if kind == "alert" and set(got or ()) != set(documented):
                    log.warning("spec enum for %s is %s, developer docs say %s", field, got, documented)

    def kind_for_path(self, path: str) -> str | None:
        r = self.routes.get(path)
        return r[0] if r else None

    @staticmethod
    def parse(raw: bytes) -> tuple[Any, str | None]:
        """(body, error). Rejects invalid UTF-8, empty bodies and NaN/Infinity."""

        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not valid JSON")

        try:
            return json.loads(raw.decode("utf-8"), parse_constant=no_constants), None
        except UnicodeDecodeError as exc:
            return None, f"JSON parse error: body is not UTF-8 ({exc.reason})"
        except RecursionError:
            return None, "JSON parse error: nesting too deep"
        except ValueError as exc:
            return None, f"JSON parse error: {str(exc)[:200]}"

    def validate_raw(self, kind: str, raw: bytes) -> tuple[Any, list[str]]:
        """Parse and validate a raw body. Returns (parsed body or None, errors)."""
        body, perr = self.parse(raw) if len(raw) <= HARD_BODY_CAP else (None, None)
        if len(raw) > MAX_BODY_BYTES:
            return body, [
                f"Event object is too large: {len(raw)} bytes exceeds the 512 KB limit "
                f"({MAX_BODY_BYTES} bytes, the cap Alertmanager enforces)"
            ]
        if perr:
            return None, [perr]
        return body, self.validate(kind, body)

    def validate(self, kind: str, body: Any) -> list[str]:
        errors: list[str] = []
        for err in sorted(self._validators[kind].iter_errors(body), key=lambda e: _path_str(e.absolute_path)):
            errors.extend(_format_schema_error(err))
        if isinstance(body, dict):
            errors.extend(self._extra_checks(kind, body))
        # keep first occurrence order, drop duplicates between schema and extra checks
        return list(dict.fromkeys(errors))

    @staticmethod
    def _extra_checks(kind: str, body: dict) -> list[str]:
        errs: list[str] = []
        rk = body.get("routing_key")
        if isinstance(rk, str) and len(rk) != ROUTING_KEY_CHARS:
            errs.append("Length of 'routing_key' is incorrect (should be 32 characters)")
        payload = body.get("payload")
        if kind == "alert":
            action = body.get("event_action")
            dk = body.get("dedup_key")
            if isinstance(dk, str) and len(dk) > MAX_DEDUP_KEY_CHARS:
                errs.append(
                    f"Length of 'dedup_key' is too long (maximum {MAX_DEDUP_KEY_CHARS} characters, "
                    f"got {len(dk)})"
                )
            if action in ("acknowledge", "resolve") and _blank(dk):
                errs.append(f"'dedup_key' is missing or blank (required for {action} events)")
            if action == "trigger":
                if "payload" not in body or payload is None:
                    errs.append("'payload' is missing or blank (required for trigger events)")
                elif isinstance(payload, dict):
                    for field in ("summary", "source", "severity"):
                        if field not in payload or _blank(payload[field]):
                            errs.append(f"'payload.{field}' is missing or blank")
        else:
            if isinstance(rk, str) and len(rk) == ROUTING_KEY_CHARS and rk.startswith("R"):
                errs.append(
                    "Change events cannot be sent to ruleset integration keys (keys starting with 'R')"
                )
            if isinstance(payload, dict) and _blank(payload.get("summary", "")):
                errs.append("'payload.summary' is missing or blank")
        if isinstance(payload, dict):
            summary = payload.get("summary")
            if isinstance(summary, str) and len(summary) > MAX_SUMMARY_CHARS:
                errs.append(
                    f"Length of 'payload.summary' is too long (maximum {MAX_SUMMARY_CHARS} characters, "
                    f"got {len(summary)})"
                )
        images = body.get("images")
        if isinstance(images, list):
            for i, img in enumerate(images):
                src = img.get("src") if isinstance(img, dict) else None
                if isinstance(src, str) and not src.lower().startswith("https://"):
                    errs.append(f"'images[{i}].src' must be an HTTPS URL (images must be served via HTTPS)")
        return errs


# --------------------------------------------------------------------------------------------
# state: request log, alert model, faults, rate tracking
# --------------------------------------------------------------------------------------------

def mask_key(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    return "****" if len(value) <= 4 else "…" + value[-4:]


def _parse_fault(spec: dict) -> dict:
    if not isinstance(spec, dict) or "mode" not in spec:
        raise ValueError("fault must be an object with a 'mode'")
    mode = str(spec["mode"]).lower()

    def count() -> int:
        c = spec.get("count", 1)
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError("'count' must be a positive integer")
        return c

    if mode == "clear":
        return {"mode": "clear"}
    if mode == "429" or (len(mode) == 3 and mode.startswith("5") and mode.isdigit()):
        body = spec.get("body", "plain" if mode == "503" else "json")
        if body not in ("json", "plain"):
            raise ValueError("'body' must be 'json' or 'plain'")
        return {"mode": mode, "count": count(), "body": body}
    if mode == "slow":
        d = spec.get("delay_ms")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0:
            raise ValueError("'delay_ms' must be a non-negative number")
        return {"mode": "slow", "delay_ms": d, "count": count()}
    if mode == "rate":
        r = spec.get("per_second")
        if r is None or r == 0:
            return {"mode": "rate", "per_second": None}
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r < 0:
            raise ValueError("'per_second' must be a positive number (0/null disables)")
        return {"mode": "rate", "per_second": r}
    raise ValueError(f"unknown fault mode {spec['mode']!r} (429, 5xx, slow, rate, clear)")


class SandboxState:
    """In-memory sandbox state. Methods are thread-safe (tests may drive a threaded server)."""

    def __init__(self, validator: EventRequestValidator):
        self.validator = validator
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests: list[dict] = []
            self.alerts: list[dict] = []
            self.change_events: list[dict] = []
            self.anomalies: list[dict] = []
            self.sequences: dict[tuple[str, str], list[dict]] = {}
            self._open: dict[tuple[str, str], dict] = {}
            self._last_alert: dict[tuple[str, str], dict] = {}
            self._faults: collections.deque[dict] = collections.deque()
            self._rate_limit: float | None = None
            self._windows: dict[str, collections.deque[float]] = {}
            self._max_rate: dict[str, int] = {}
            self._seq = 0

    # ---- faults ---------------------------------------------------------------------------
    def set_fault(self, spec: dict | list | None = None, **kw: Any) -> dict:
        """Add a fault: set_fault({"mode": "429", "count": 2}) or set_fault(mode="slow", delay_ms=50)."""
        specs = spec if isinstance(spec, list) else [dict(spec or {}, **kw)]
        parsed = [_parse_fault(s) for s in specs]  # validate all before applying any
        with self._lock:
            for f in parsed:
                if f["mode"] == "clear":
                    self._faults.clear()
                    self._rate_limit = None
                elif f["mode"] == "rate":
                    self._rate_limit = f["per_second"]
                else:
                    self._faults.append(dict(f))
            return self.faults()

    def clear_faults(self) -> dict:
        return self.set_fault({"mode": "clear"})

    def faults(self) -> dict:
        with self._lock:
            return {"queue": [dict(f) for f in self._faults], "rate_per_second": self._rate_limit}

    def take_fault(self) -> dict | None:
        with self._lock:
            if not self._faults:
                return None
            head = self._faults[0]
            head["count"] -= 1
            if head["count"] <= 0:
                self._faults.popleft()
            return {k: v for k, v in head.items() if k != "count"}

    # ---- request log ----------------------------------------------------------------------
    def record(self, entry: dict) -> dict:
        with self._lock:
            entry["id"] = len(self.requests) + 1
            self.requests.append(entry)
            return entry

    def find_requests(self, routing_key: str | None = None, dedup_key: str | None = None) -> list[dict]:
        with self._lock:
            return [
                r for r in self.requests
                if (routing_key is None or r.get("routing_key") == routing_key)
                and (dedup_key is None or r.get("dedup_key") == dedup_key)
            ]

    # ---- ingestion --------------------------------------------------------------------------
    def accept(self, kind: str, body: dict, entry: dict) -> tuple[int, dict]:
        """Rate check plus ingestion, atomically. Returns (status, response body)."""
        rk = body["routing_key"]
        now = time.monotonic()
        with self._lock:
            win = self._windows.setdefault(rk, collections.deque())
            while win and win[0] <= now - 1.0:
                win.popleft()
            if self._rate_limit is not None and len(win) + 1 > self._rate_limit:
                entry["fault"] = "rate"
                return 429, dict(THROTTLE_BODY)
            win.append(now)
            self._max_rate[rk] = max(self._max_rate.get(rk, 0), len(win))
            entry["ingested"] = True
            if kind == "change":
                self.change_events.append({"request_id": entry["id"], "time": entry["time"], "body": body})
                return 202, {"status": "success", "message": OK_MESSAGE}
            dk = body.get("dedup_key")
            if body["event_action"] == "trigger" and _blank(dk):
                dk = uuid.uuid4().hex
            entry["dedup_key"] = dk
            self._apply_alert_event(rk, dk, body, entry)
            return 202, {"status": "success", "message": OK_MESSAGE, "dedup_key": dk}

    def _apply_alert_event(self, rk: str, dk: str, body: dict, entry: dict) -> None:
        action = body["event_action"]
        key = (rk, dk)
        now = entry["time"]
        alert = self._open.get(key)
        outcome: str
        if action == "trigger":
            payload = body.get("payload") or {}
            if alert is None:
                alert = {
                    "id": len(self.alerts) + 1,
                    "routing_key": rk,
                    "dedup_key": dk,
                    "status": "triggered",
                    "summary": payload.get("summary"),
                    "severity": payload.get("severity"),
                    "source": payload.get("source"),
                    "opened_at": now,
                    "acknowledged_at": None,
                    "resolved_at": None,
                    "updated_at": now,
                    "trigger_count": 1,
                    "request_ids": [entry["id"]],
                }
                self.alerts.append(alert)
                self._open[key] = alert
                self._last_alert[key] = alert
                outcome = "opened"
            else:  # a duplicate; an acknowledged alert stays acknowledged
                alert["trigger_count"] += 1
                alert["updated_at"] = now
                alert["request_ids"].append(entry["id"])
                outcome = "duplicate"
        elif alert is not None:
            alert["updated_at"] = now
            alert["request_ids"].append(entry["id"])
            if action == "acknowledge":
                if alert["status"] == "triggered":
                    alert["status"], alert["acknowledged_at"] = "acknowledged", now
                outcome = "acknowledged"
            else:
                alert["status"], alert["resolved_at"] = "resolved", now
                del self._open[key]
                outcome = "resolved"
        else:
            outcome = "dropped"
            self._note_anomaly(rk, dk, action, entry)
        entry["outcome"] = outcome
        self._seq += 1
        self.sequences.setdefault(key, []).append({
            "seq": self._seq,
            "request_id": entry["id"],
            "time": now,
            "action": action,
            "outcome": outcome,
            "alert_id": alert["id"] if alert else None,
        })

    def _note_anomaly(self, rk: str, dk: str, action: str, entry: dict) -> None:
        other = [k for k in self._open if k[1] == dk and k[0] != rk]
        last = self._last_alert.get((rk, dk))
        if other:
            kind = "routing_key_mismatch"
            detail = f"{action} for a dedup_key that is open under another routing_key"
        elif last is None:
            kind, detail = f"{action}_without_trigger", f"{action} for a dedup_key that was never triggered"
        else:
            kind = f"{action}_after_resolve"
            detail = f"{action} after the alert was resolved, with no new trigger"
        self.anomalies.append({
            "kind": kind,
            "routing_key": rk,
            "dedup_key": dk,
            "action": action,
            "request_id": entry["id"],
            "time": entry["time"],
            "detail": detail,
        })

    # ---- inspection ---------------------------------------------------------------------------
    def open_alert(self, routing_key: str, dedup_key: str) -> dict | None:
        with self._lock:
            return self._open.get((routing_key, dedup_key))

    def sequence(self, routing_key: str, dedup_key: str) -> list[str]:
        """Actions received (and ingested) for a key, in arrival order."""
        with self._lock:
            return [e["action"] for e in self.sequences.get((routing_key, dedup_key), [])]

    def alerts_view(self) -> dict:
        with self._lock:
            return {
                "alerts": copy.deepcopy(self.alerts),
                "sequences": [
                    {"routing_key": rk, "dedup_key": dk, "events": copy.deepcopy(evs)}
                    for (rk, dk), evs in self.sequences.items()
                ],
                "anomalies": copy.deepcopy(self.anomalies),
            }

    def stats(self) -> dict:
        with self._lock:
            by_status: dict[str, int] = collections.Counter(
                str(r["status"]) for r in self.requests if r.get("status") is not None
            )
            by_state = collections.Counter(a["status"] for a in self.alerts)
            return {
                "requests": len(self.requests),
                "by_status": dict(sorted(by_status.items())),
                "accepted": by_status.get("202", 0),
                "dropped": sum(1 for r in self.requests if r.get("outcome") == "dropped"),
                "change_events": len(self.change_events),
                "alerts": {
                    "total": len(self.alerts),
                    "open": len(self._open),
                    "triggered": by_state.get("triggered", 0),
                    "acknowledged": by_state.get("acknowledged", 0),
                    "resolved": by_state.get("resolved", 0),
                },
                "max_rate_1s": dict(self._max_rate),
                "anomalies": copy.deepcopy(self.anomalies),
                "faults": self.faults(),
            }


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

STATE_KEY = web.AppKey("pd_sandbox_state", SandboxState)


def _invalid(errors: list[str]) -> web.Response:
    body = {"status": INVALID_STATUS, "message": INVALID_MESSAGE, "errors": errors}
    return web.json_response(body, status=400)


def _forced_response(fault: dict) -> tuple[int, web.Response, dict | str]:
    code = int(fault["mode"])
    if fault.get("body") == "plain":  # clients must cope with a missing JSON body
        reason = {429: "Too Many Requests", 503: "Service Unavailable"}.get(code, "Server Error")
        text = f"{code} {reason}"
        return code, web.Response(status=code, text=text), text
    if code == 429:
        return code, web.json_response(THROTTLE_BODY, status=429), dict(THROTTLE_BODY)
    body = {
        "status": SERVER_ERROR_STATUS,
        "message": SERVER_ERROR_MESSAGE,
        "errors": [f"Sandbox injected HTTP {code}"],
    }
    return code, web.json_response(body, status=code), body


def _log_line(entry: dict) -> None:
    dk = entry.get("dedup_key")
    log.info(
        "%s %s -> %s action=%s dedup_key=%s routing_key=%s%s",
        entry["method"], entry["path"], entry.get("status"),
        ascii(entry.get("action"))[:40] if entry.get("action") is not None else "-",
        ascii(dk)[:80] if dk is not None else "-",
        mask_key(entry.get("routing_key")),
        f" fault={entry['fault']}" if entry.get("fault") else "",
    )


async def _handle_event(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    kind = state.validator.kind_for_path(request.path)
    entry = state.record({
        "time": time.time(),
        "method": request.method,
        "path": request.path,
        "kind": kind,
        "headers": {h: request.headers.get(h) for h in ("User-Agent", "Content-Type")},
        "body": None,
        "size": None,
        "routing_key": None,
        "dedup_key": None,
        "action": None,
        "status": None,
        "response": None,
        "errors": [],
        "fault": None,
        "ingested": False,
        "outcome": None,
    })
    try:
        resp = await _process_event(request, state, kind, entry)
    except asyncio.CancelledError:
        entry["outcome"] = "client_disconnected"
        _log_line(entry)
        raise
    entry["responded_at"] = time.time()
    _log_line(entry)
    return resp


async def _process_event(
    request: web.Request, state: SandboxState, kind: str, entry: dict
) -> web.StreamResponse:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raw = None
    if raw is not None:
        entry["size"] = len(raw)
        body, errors = state.validator.validate_raw(kind, raw)
    else:
        body, errors = None, [f"Event object is too large (over {HARD_BODY_CAP} bytes; limit is 512 KB)"]
    entry["body"] = body
    if isinstance(body, dict):
        for f in ("routing_key", "dedup_key"):
            entry[f] = body.get(f) if isinstance(body.get(f), str) else None
        entry["action"] = body.get("event_action") if kind == "alert" else "change"

    fault = state.take_fault()
    if fault and fault["mode"] != "slow":
        entry["fault"] = fault["mode"]
        entry["status"], resp, entry["response"] = _forced_response(fault)
        return resp
    if fault:  # slow: delay, then behave normally
        entry["fault"] = "slow"
        await asyncio.sleep(fault["delay_ms"] / 1000.0)

    if errors:
        entry["errors"] = errors
        entry["status"] = 400
        entry["response"] = {"status": INVALID_STATUS, "message": INVALID_MESSAGE, "errors": errors}
        return _invalid(errors)
    status, out = state.accept(kind, body, entry)
    entry["status"], entry["response"] = status, out
    return web.json_response(out, status=status)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


async def _get_requests(request: web.Request) -> web.Response:
    q = request.query
    items = _state(request).find_requests(q.get("routing_key"), q.get("dedup_key"))
    return web.json_response({"count": len(items), "requests": items}, dumps=_dumps)


async def _get_alerts(request: web.Request) -> web.Response:
    return web.json_response(_state(request).alerts_view(), dumps=_dumps)


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(_state(request).stats(), dumps=_dumps)


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(_state(request).faults())


async def _post_faults(request: web.Request) -> web.Response:
    try:
        spec = json.loads(await request.text())
        faults = _state(request).set_fault(spec)
    except (ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    log.info("faults set: %s", faults)
    return web.json_response(faults)


async def _post_reset(request: web.Request) -> web.Response:
    _state(request).reset()
    log.info("sandbox reset")
    return web.json_response({"status": "reset"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


@web.middleware
async def _log_other(request: web.Request, handler: Any) -> web.StreamResponse:
    resp = await handler(request)
    if request.path.startswith("/sandbox") or request.path == "/healthz":
        log.debug("%s %s -> %s", request.method, request.path, resp.status)
    return resp


def make_app(spec_path: str | os.PathLike | None = None) -> web.Application:
    """Build the sandbox app. Loads (and fails fast on) the official spec."""
    validator = EventRequestValidator(load_events_spec(spec_path))
    app = web.Application(client_max_size=HARD_BODY_CAP, middlewares=[_log_other])
    app[STATE_KEY] = SandboxState(validator)
    for path in validator.routes:
        app.router.add_post(path, _handle_event)
    app.router.add_get("/sandbox/requests", _get_requests)
    app.router.add_get("/sandbox/alerts", _get_alerts)
    app.router.add_get("/sandbox/stats", _get_stats)
    app.router.add_get("/sandbox/faults", _get_faults)
    app.router.add_post("/sandbox/faults", _post_faults)
    app.router.add_post("/sandbox/reset", _post_reset)
    app.router.add_get("/healthz", _healthz)
    _mount_rest(app, spec_path)
    return app


def _mount_rest(app: web.Application, spec_path: str | os.PathLike | None) -> None:
    """Serve the REST API v2 stand-in (streams/pd_rest_sandbox.py) from the same app."""
    contracts = Path(spec_path).expanduser() if spec_path is not None and Path(spec_path).is_dir() else None
    try:
        try:
            from .pd_rest_sandbox import add_rest_routes
        except ImportError:  # run as a plain script, not as part of the package
            from pd_rest_sandbox import add_rest_routes  # type: ignore[no-redef]
        add_rest_routes(app, contracts_dir=contracts)
    except (ImportError, FileNotFoundError) as exc:  # SpecNotFoundError is a FileNotFoundError
        log.warning("REST API sandbox not mounted: %s", exc)


class SandboxServer:
    """Runs the sandbox on a real socket.

    async with SandboxServer() as sb: ...   # in the caller's event loop
    with SandboxServer() as sb: ...         # in a background thread (for sync code)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, spec_path: str | os.PathLike | None = None):
        self.host = host
        self.port = port
        self.app = make_app(spec_path)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def state(self) -> SandboxState:
        return self.app[STATE_KEY]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def events_url(self) -> str:
        return self.url + "/v2/enqueue"

    async def start(self) -> "SandboxServer":
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("PagerDuty sandbox listening on %s", self.url)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "SandboxServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def __enter__(self) -> "SandboxServer":
        ready = threading.Event()
        failure: list[BaseException] = []

        def target() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # surface startup errors to the caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=target, name="pd-sandbox", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = self._loop = None


def run(host: str = "127.0.0.1", port: int = 8788, spec_path: str | os.PathLike | None = None) -> None:
    """Serve until interrupted (used by `pagerstream pd-sandbox`)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(spec_path)
    log.info("PagerDuty sandbox: POST http://%s:%s/v2/enqueue", host, port)
    web.run_app(app, host=host, port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Local PagerDuty Events API v2 sandbox")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8788)
    ap.add_argument(
        "--spec-path", default=None, help=f"spec file or contracts dir (default: ${CONTRACTS_ENV})"
    )
    args = ap.parse_args(argv)
    run(args.host, args.port, args.spec_path)


if __name__ == "__main__":
    main()
