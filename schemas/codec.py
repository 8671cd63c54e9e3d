"""Avro single-object encoding on top of fastavro.

Neither fastavro nor the ``avro`` package frames single-object encoding, so the framing
(10 bytes) is done here; the Avro body itself is fastavro's ``schemaless_writer`` /
``schemaless_reader`` (which also performs writer→reader schema resolution).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MARKER = b"\xc3\x01"
HEADER_LEN = 10
SCHEMA_DIR = Path(__file__).resolve().parent

# Logical name → file stem. Logical names are what the rest of the code uses.
SCHEMA_NAMES = {
    "raw_alert": "raw_alert",
    "alert": "alert",
    "incident_event": "incident_event",
    "pagerduty_event": "pagerduty_event",
    "dead_letter": "dead_letter",
    "service_entry": "service_entry",
    "tick": "tick",
    "predicted_incident": "predicted_incident",
    "model_feedback": "model_feedback",
    "pagerduty_webhook": "pagerduty_webhook",
    "incident_lifecycle": "incident_lifecycle",
    "audit_record": "audit_record",
}


class DecodeError(ValueError):
    """The bytes are not a single-object encoded record we can read."""


class UnknownSchema(DecodeError):
    """The writer schema's fingerprint is not one we know."""


def _fingerprint(parsed: dict[str, Any]) -> bytes:
    pcf = to_parsing_canonical_form(parsed)
    # fastavro returns the CRC-64-AVRO fingerprint as hex of the little-endian bytes.
    return bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))


@dataclass
class SchemaRegistry:
    """All schema versions known to this process, by fingerprint."""

    current: dict[str, dict[str, Any]] = field(default_factory=dict)  # logical name → parsed
    by_fingerprint: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    fingerprints: dict[str, bytes] = field(default_factory=dict)  # logical name → current fp

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR) -> "SchemaRegistry":
        reg = cls()
        for logical, stem in SCHEMA_NAMES.items():
            parsed = parse_schema(json.loads((directory / f"{stem}.avsc").read_text()))
            fp = _fingerprint(parsed)
            reg.current[logical] = parsed
            reg.fingerprints[logical] = fp
            reg.by_fingerprint[fp] = parsed
        hist = directory / "history"
        if hist.is_dir():
            for f in sorted(hist.glob("*.avsc")):
                parsed = parse_schema(json.loads(f.read_text()))
                reg.by_fingerprint.setdefault(_fingerprint(parsed), parsed)
        return reg


@lru_cache(maxsize=1)
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


class AvroCodec:
    """Encode/decode one logical record type (reader schema = the current version)."""

    def __init__(self, logical_name: str, reg: SchemaRegistry | None = None) -> None:
        self.reg = reg or registry()
        self.name = logical_name
        self.schema = self.reg.current[logical_name]
        self.header = MARKER + self.reg.fingerprints[logical_name]

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < HEADER_LEN:
            raise DecodeError("not an Avro single-object record (too short)")
        if data[:2] != MARKER:
            raise DecodeError(f"not an Avro single-object record (marker {bytes(data[:2]).hex()})")
        fp = bytes(data[2:HEADER_LEN])
        writer = self.reg.by_fingerprint.get(fp)
        if writer is None:
            raise UnknownSchema(f"unknown writer schema fingerprint {fp.hex()}")
        try:
            if writer is self.schema:
                return fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, None)
            return fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, self.schema)
        except Exception as e:  # fastavro raises EOFError, ValueError, SchemaResolutionError...
            raise DecodeError(f"corrupt Avro body for {self.name}: {e}") from e


def fingerprint_of(data: bytes) -> str | None:
    """Hex fingerprint of a framed record, or None when unframed (for `tail` and dead letters)."""
    if len(data) >= HEADER_LEN and data[:2] == MARKER:
        return bytes(data[2:HEADER_LEN]).hex()
    return None


def little_endian_u64(fp: bytes) -> int:
    return struct.unpack("<Q", fp)[0]


def decode_any(data: bytes | None) -> Any:
    """Decode a framed record of any known schema (for `tail` and debugging); raw text otherwise."""
    if data is None:
        return None
    reg = registry()
    if len(data) >= HEADER_LEN and data[:2] == MARKER:
        writer = reg.by_fingerprint.get(bytes(data[2:HEADER_LEN]))
        if writer is not None:
            try:
                rec = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, None)
            except Exception as e:  # corrupt body: show it rather than crash a `tail`
                return {"_error": f"corrupt Avro body: {type(e).__name__}", "_hex": bytes(data[:64]).hex()}
            name = writer.get("name", "") if isinstance(writer, dict) else ""
            return {"_schema": name, **rec} if isinstance(rec, dict) else rec
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")
