"""Reading inbound request bodies: JSON text and the timestamps found inside it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ISO 8601 / RFC 3339 date-times as monitoring tools write them: "Z" or "+hh:mm" or
# PagerDuty's "+hhmm", any number of fraction digits (Go writes nanoseconds).
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?"
)


def parse_json(body: bytes) -> tuple[Any, list[str]]:
    """The JSON value of `body`, or (None, [reason]) when it is not JSON we accept."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(body, parse_constant=no_constants)
        if _MAY_HOLD_SURROGATES.search(body[:4]) or _SURROGATE_ESCAPE.search(body):
            value = _replace_surrogates(value)
        return value, []
    except RecursionError:
        return None, ["JSON parse error: nested too deeply"]
    except (ValueError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, [f"JSON parse error: {e}"]


# Python's json accepts unpaired UTF-16 surrogates ("\ud800"); such text cannot be encoded
# as UTF-8 later (Avro, HTTP). Like Go's decoder we turn them into U+FFFD.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_MAY_HOLD_SURROGATES = re.compile(rb"\x00")  # UTF-16/32 bodies: check them all
_LONE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def parse_timestamp_ms(text: object) -> int | None:
    """Epoch milliseconds of an ISO 8601 date-time, None if it is not one.

    Without an offset the time is taken as UTC. Fractions beyond milliseconds are dropped.
    """
    if not isinstance(text, str):
        return None
    m = _ISO.fullmatch(text.strip())
    if not m:
        return None
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    millis = int((m.group(7) or "0")[:3].ljust(3, "0"))
    offset = timedelta(0)
    if m.group(9):
        hours, minutes = int(m.group(10)), int(m.group(11) or 0)
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (1 if m.group(9) == "+" else -1)
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        return None
    return (dt - _EPOCH) // timedelta(milliseconds=1) + millis


def event_time_ms(text: object, fallback_ms: int) -> int:
    """The payload's own time when it has a parseable one, else `fallback_ms`."""
    parsed = parse_timestamp_ms(text)
    return fallback_ms if parsed is None else parsed


def dump_details(details: object) -> str:
    """custom_details as compact JSON text (the Alert keeps it as text)."""
    return json.dumps(details, ensure_ascii=False, separators=(",", ":"))


def is_blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
