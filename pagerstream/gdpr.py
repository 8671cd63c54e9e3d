"""GDPR access (export) and erasure for one person, over the state pagerstream keeps (docs/compliance.md).

Where a person can appear, and what `erase` can do about it:

* Redis (route decisions, on-call snapshots, PagerDuty REST cache, notification refs): keys whose name or
  value mentions the person are deleted.
* Faust tables (groups, aliases, transient, incident-features, lifecycles, ...), through their compacted
  changelog topics `<app id>-<table>-changelog`: the latest value of every key that mentions the person
  is rewritten with the mention replaced by `[ERASED]` (the incident state keeps working), or the key
  is tombstoned when the key itself is the person's data. The workers must be stopped: an active table
  does not read its own changelog, so a running worker would write the old value back; a stopped one
  applies the rewrites when it recovers its tables at start (recovery resumes from the last offset
  it persisted).
* Compacted pagerstream topics with one record per key (incidents.lifecycle): rewritten or tombstoned
  in the same way. pagerstream.catalog is configuration: reported, changed at its source (the catalog
  file), never rewritten here. models.checkpoints is sealed (Fernet): reported as not scanned.
* Topics with time retention (alerts.raw 7 days, incidents 30 days, dead letters 30 days, ...): Kafka
  cannot delete one record from the middle of a log. Matches are reported with the time by which
  retention removes them (`expires_by`); nothing is written.

Compacted topics keep superseded records until the log cleaner runs on a closed segment: the report
counts them as `superseded` with the settings that bound when they go (segment.ms, max.compaction.lag.ms).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ERASED = "[ERASED]"
REDIS_PATTERNS = ("pagerstream:*", "notify:*")  # the key prefixes pagerstream writes
CONFIG_TOPICS = ("pagerstream.catalog",)  # configuration: edit the source and republish
SEALED_TOPICS = ("models.checkpoints",)  # Fernet tokens of pickled models: not readable as text
MAX_SHOWN = 50  # matching records listed per topic in a report (all are counted)


# ---- who -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """The person: email addresses (any case, also URL-encoded) and/or user ids (whole tokens)."""

    emails: tuple[str, ...] = ()
    user_ids: tuple[str, ...] = ()
    _rx: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = []
        for e in self.emails:
            local, _, domain = e.partition("@")
            # whole addresses only: not joann.lee@ for ann.lee@, nor @example.org.uk for @example.org
            parts.append(rf"(?<![A-Za-z0-9._%+-])(?i:{re.escape(local)}(?:@|%40){re.escape(domain)})"
                         r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])")
        parts += [rf"(?<![A-Za-z0-9_]){re.escape(u)}(?![A-Za-z0-9_])" for u in self.user_ids]
        if not parts or any(len(x) < 3 for x in (*self.emails, *self.user_ids)):
            raise ValueError("give at least one email or user id (3 characters or more)")
        object.__setattr__(self, "_rx", re.compile("|".join(parts)))

    def found(self, text: str) -> bool:
        return self._rx.search(text) is not None

    def scrub(self, text: str) -> str:
        return self._rx.sub(ERASED, text)

    def to_dict(self) -> dict[str, Any]:
        return {"emails": list(self.emails), "user_ids": list(self.user_ids)}


def _text(b: bytes | None) -> str:
    return "" if b is None else b.decode("utf-8", "replace")


def _jsonable(x: Any) -> Any:
    if isinstance(x, (bytes, bytearray, memoryview)):
        return _text(bytes(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def mentions(obj: Any, who: Subject, path: str = "") -> list[dict[str, str]]:
    """Where in a decoded value the person appears: [{path, value}], value = the text holding it."""
    out: list[dict[str, str]] = []
    if isinstance(obj, (bytes, bytearray)):
        obj = _text(bytes(obj))
    if isinstance(obj, str):
        if who.found(obj):
            inner = None
            if obj[:1] in "{[":  # JSON inside a string (custom_details_json, a raw body): say where inside
                try:
                    inner = json.loads(obj)
                except ValueError:
                    inner = None
            found = mentions(inner, who, path) if isinstance(inner, (dict, list)) else []
            out += found or [{"path": path or "$", "value": obj[:500]}]
    elif isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else str(k)
            if who.found(str(k)):
                out.append({"path": sub, "value": f"(key) {k}"[:500]})
            out += mentions(v, who, sub)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += mentions(v, who, f"{path}[{i}]")
    return out


def scrub(obj: Any, who: Subject) -> Any:
    """`obj` with every mention (in keys and values, bytes included) replaced by [ERASED]."""
    if isinstance(obj, str):
        return who.scrub(obj)
    if isinstance(obj, (bytes, bytearray)):
        return who.scrub(_text(bytes(obj))).encode()
    if isinstance(obj, dict):
        return {(who.scrub(k) if isinstance(k, str) else k): scrub(v, who) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, who) for v in obj]
    return obj


# ---- Redis -----------------------------------------------------------------------------------------


async def _redis_value(r: Any, key: bytes) -> tuple[str, Any]:
    kind = _text(await r.type(key))
    if kind == "string":
        return kind, _text(await r.get(key))
    if kind == "hash":
        return kind, {_text(k): _text(v) for k, v in (await r.hgetall(key)).items()}
    if kind == "list":
        return kind, [_text(v) for v in await r.lrange(key, 0, -1)]
    if kind == "set":
        return kind, sorted(_text(v) for v in await r.smembers(key))
    if kind == "zset":
        return kind, [[_text(m), s] for m, s in await r.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return kind, [[_text(i), {_text(k): _text(v) for k, v in f.items()}] for i, f in await r.xrange(key)]
    return kind, None


async def scan_redis(r: Any, who: Subject, patterns: Iterable[str] = REDIS_PATTERNS) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    seen: set[bytes] = set()
    for pattern in patterns:
        async for key in r.scan_iter(match=pattern, count=1000):
            if key in seen:
                continue
            seen.add(key)
            kind, value = await _redis_value(r, key)
            where = mentions(value, who)
            if who.found(_text(key)):
                where.insert(0, {"path": "(key)", "value": _text(key)})
            if where:
                found.append({"key": _text(key), "type": kind, "ttl_s": await r.ttl(key), "mentions": where})
    return found


# ---- Kafka -----------------------------------------------------------------------------------------


@dataclass
class TopicInfo:
    name: str
    kind: str  # "log" (time retention), "compacted", "changelog", "config", "sealed"
    cleanup: str = "delete"
    retention_ms: int = -1
    segment_ms: int | None = None
    max_compaction_lag_ms: int | None = None
    table: str | None = None
    partitions: tuple[int, ...] = ()


def _decode(value: bytes | None) -> tuple[Any, str | None]:
    """(decoded value, Avro logical name or None)."""
    if value is None:
        return None, None
    from pagerstream.schemas.codec import HEADER_LEN, MARKER, decode_any, registry

    if len(value) >= HEADER_LEN and value[:2] == MARKER:
        by_fp = {fp: name for name, fp in registry().fingerprints.items()}
        name = by_fp.get(bytes(value[2:HEADER_LEN]))
        if name is not None:
            from pagerstream.schemas import AvroCodec

            try:
                return AvroCodec(name).decode(value), name
            except Exception:  # noqa: BLE001 - fall back to the generic reader below
                pass
    return decode_any(value), None


def _encode(obj: Any, avro_name: str | None) -> bytes:
    if avro_name is not None:
        from pagerstream.schemas import AvroCodec

        return AvroCodec(avro_name).encode(obj)
    return json.dumps(obj).encode()  # Faust tables: value_serializer="json"


async def _topic_infos(admin: Any, settings: Any) -> list[TopicInfo]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from pagerstream.streams.topics import topic_specs

    specs = {s.name: short for short, s in topic_specs(settings.topic_prefix).items()}
    app_prefix = f"{settings.app_id}-"
    names = sorted(t for t in await admin.list_topics() if t in specs or t.startswith(app_prefix))
    parts = {d["topic"]: tuple(sorted(p["partition"] for p in d["partitions"]))
             for d in (await admin.describe_topics(names) if names else [])}
    infos: list[TopicInfo] = []
    for name in names:
        cfg: dict[str, str] = {}
        try:
            resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
            for res in resp[0].resources:
                cfg.update({e[0]: e[1] for e in res[4]})
        except Exception:  # noqa: BLE001 - report what the spec says instead
            pass
        short = specs.get(name)
        cleanup = cfg.get("cleanup.policy", "delete")
        info = TopicInfo(name=name, kind="log", cleanup=cleanup, retention_ms=int(cfg.get("retention.ms", "-1")),
                         segment_ms=int(cfg["segment.ms"]) if "segment.ms" in cfg else None,
                         max_compaction_lag_ms=int(cfg["max.compaction.lag.ms"]) if "max.compaction.lag.ms" in cfg
                         else None, partitions=parts.get(name, ()))  # fmt: skip
        if short in CONFIG_TOPICS:
            info.kind = "config"
        elif short in SEALED_TOPICS:
            info.kind = "sealed"
        elif name.startswith(app_prefix) and name.endswith("-changelog"):
            info.kind, info.table = "changelog", name[len(app_prefix) : -len("-changelog")]
        elif "compact" in cleanup:
            info.kind = "compacted"
        infos.append(info)
    return infos


async def _read_all(bootstrap: Any, topics: dict[str, tuple[int, ...]]) -> dict[str, list[Any]]:
    """Every record of `topics` ({name: partitions}) up to their end offsets at the start of the read.
    `bootstrap`: Settings, or a bootstrap string (TLS/SASL from the environment: pagerstream.connections)."""
    from aiokafka import TopicPartition

    from pagerstream.connections import kafka_consumer

    out: dict[str, list[Any]] = {t: [] for t in topics}
    if not topics:
        return out
    c = kafka_consumer(bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest",
                       max_partition_fetch_bytes=16 * 2**20, fetch_max_bytes=64 * 2**20)
    await c.start()
    try:
        tps = [TopicPartition(t, p) for t, parts in topics.items() for p in parts]
        if not tps:
            return out
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        todo = {tp for tp in tps if end[tp] > 0}
        idle = 0
        while todo and idle < 20:  # 20 empty fetches in a row: the rest is unreadable (reported)
            batch = await c.getmany(*todo, timeout_ms=500)
            idle = 0 if batch else idle + 1
            for tp, msgs in batch.items():
                out[tp.topic].extend(m for m in msgs if m.offset < end[tp])
            for tp in list(todo):
                if await c.position(tp) >= end[tp]:
                    todo.discard(tp)
        if todo:
            raise RuntimeError(f"could not read to the end of {sorted({tp.topic for tp in todo})}")
    finally:
        await c.stop()
    return out


def _ms_iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _scan_topic(info: TopicInfo, records: list[Any], who: Subject) -> dict[str, Any] | None:
    if info.kind == "sealed":
        return {"topic": info.name, "kind": "sealed", "scanned": False, "matching_records": 0, "erasable": 0,
                "note": "Fernet-sealed model checkpoints: not readable as text; relearn the model to forget"}  # fmt: skip
    latest: dict[tuple[int, bytes | None], Any] = {}
    hits: list[dict[str, Any]] = []
    for m in records:
        if info.kind in ("changelog", "compacted", "config"):
            latest[(m.partition, m.key)] = m
        decoded, _ = _decode(m.value)
        where = mentions(_jsonable(decoded), who)
        if who.found(_text(m.key)):
            where.insert(0, {"path": "(key)", "value": _text(m.key)[:500]})
        if where:
            hits.append({"partition": m.partition, "offset": m.offset, "timestamp": m.timestamp,
                         "key": _text(m.key)[:200], "mentions": where, "_key": m.key})  # fmt: skip
    if not hits:
        return None
    keys = [h.pop("_key") for h in hits]
    rep: dict[str, Any] = {"topic": info.name, "kind": info.kind, "cleanup": info.cleanup,
                           "retention_ms": info.retention_ms, "matching_records": len(hits)}  # fmt: skip
    if info.table:
        rep["table"] = info.table
    if info.kind == "log":
        last = max(h["timestamp"] for h in hits)
        rep["records"] = hits[:MAX_SHOWN]
        rep["expires_by"] = None if info.retention_ms < 0 else _ms_iso(last + info.retention_ms)
        rep["erasable"] = 0
        rep["note"] = ("time retention: records cannot be deleted one by one; they age out by expires_by"
                       if info.retention_ms >= 0 else "kept forever (retention.ms=-1): not erasable in place")
        return rep
    current = []
    for h, key in zip(hits, keys):
        m = latest.get((h["partition"], key))
        if m is not None and m.offset == h["offset"] and m.value is not None:
            current.append(h | {"action": "tombstone" if who.found(_text(m.key)) else "rewrite"})
    rep["current"] = current
    rep["superseded"] = len(hits) - len(current)
    rep["erasable"] = 0 if info.kind == "config" else len(current)
    if info.kind == "config":
        rep["note"] = "configuration: change it at its source (the catalog file) and republish"
    if rep["superseded"]:
        rep["note"] = (rep.get("note", "") + " superseded records stay until the log cleaner compacts a closed "
                       f"segment (segment.ms={info.segment_ms}, max.compaction.lag.ms={info.max_compaction_lag_ms})"
                       ).strip()
    return rep


@dataclass
class Scan:
    report: dict[str, Any]
    records: dict[str, list[Any]]
    infos: dict[str, TopicInfo]


async def scan(settings: Any, who: Subject, *, redis_patterns: Iterable[str] = REDIS_PATTERNS) -> Scan:
    from pagerstream.connections import kafka_admin

    admin = kafka_admin(settings, request_timeout_ms=30000)
    await admin.start()
    try:
        infos = {i.name: i for i in await _topic_infos(admin, settings)}
    finally:
        await admin.close()
    records = await _read_all(settings,
                              {n: i.partitions for n, i in infos.items() if i.kind != "sealed"})
    topics = [r for n, i in infos.items() if (r := _scan_topic(i, records.get(n, []), who)) is not None]
    unread = [n for n, i in infos.items() if i.kind != "sealed" and not i.partitions]
    r = _redis(settings)
    try:
        redis_hits = await scan_redis(r, who, redis_patterns)
    finally:
        await r.aclose()
    erasable = len(redis_hits) + sum(t.get("erasable", 0) for t in topics)
    report = {
        "subject": who.to_dict(), "generated_at": _ms_iso(int(time.time() * 1000)),
        "app_id": settings.app_id, "topic_prefix": settings.topic_prefix,
        "summary": {"erasable": erasable, "redis_keys": len(redis_hits),
                    "table_entries": sum(len(t.get("current", [])) for t in topics if t["kind"] == "changelog"),
                    "compacted_records": sum(len(t.get("current", [])) for t in topics if t["kind"] == "compacted"),
                    "retained_until_expiry": sum(t["matching_records"] for t in topics if t["kind"] == "log"),
                    "superseded_awaiting_compaction": sum(t.get("superseded", 0) for t in topics),
                    "configuration": sum(t["matching_records"] for t in topics if t["kind"] == "config")},
        "not_read": unread,
        "redis": redis_hits,
        "tables": [t for t in topics if t["kind"] == "changelog"],
        "topics": [t for t in topics if t["kind"] != "changelog"],
    }  # fmt: skip
    return Scan(report, records, infos)


def _redis(settings: Any) -> Any:
    from pagerstream.connections import redis_client

    return redis_client(settings, socket_timeout=10, socket_connect_timeout=5)


def export(settings: Any, who: Subject, **kw: Any) -> dict[str, Any]:
    return asyncio.run(scan(settings, who, **kw)).report


# ---- erase -----------------------------------------------------------------------------------------


class WorkersRunning(RuntimeError):
    """The Faust consumer group has members: table rewrites would be overwritten by the running workers."""


async def group_members(settings: Any) -> tuple[str, int]:
    from pagerstream.connections import kafka_admin

    admin = kafka_admin(settings, request_timeout_ms=30000)
    await admin.start()
    try:
        resp = await admin.describe_consumer_groups([settings.app_id])
        g = resp[0].groups[0]
        return str(g[2]), len(g[5])
    finally:
        await admin.close()


async def erase_async(settings: Any, who: Subject, *, allow_running: bool = False, dry_run: bool = False,
                      redis_patterns: Iterable[str] = REDIS_PATTERNS) -> dict[str, Any]:
    state, members = await group_members(settings)
    if members and not allow_running:
        raise WorkersRunning(f"consumer group {settings.app_id!r} is {state} with {members} member(s): stop the "
                             "workers first (a running worker writes its table values back), or --allow-running")
    s = await scan(settings, who, redis_patterns=redis_patterns)
    actions: list[dict[str, Any]] = []
    r = _redis(settings)
    try:
        for hit in s.report["redis"]:
            if not dry_run:
                await r.delete(hit["key"])
            actions.append({"store": "redis", "key": hit["key"], "action": "deleted"})
    finally:
        await r.aclose()
    writes: list[tuple[str, int, bytes | None, bytes | None]] = []
    for t in s.report["tables"] + s.report["topics"]:
        if t["kind"] not in ("changelog", "compacted"):
            continue
        by_offset = {(m.partition, m.offset): m for m in s.records.get(t["topic"], [])}
        for cur in t.get("current", []):
            m = by_offset[(cur["partition"], cur["offset"])]
            if cur["action"] == "tombstone":
                new = None
            else:
                decoded, avro_name = _decode(m.value)
                new = _encode(scrub(decoded, who), avro_name)
            writes.append((t["topic"], m.partition, m.key, new))
            actions.append({"store": "kafka", "topic": t["topic"], "table": t.get("table"), "partition": m.partition,
                            "key": _text(m.key)[:200], "action": cur["action"]})  # fmt: skip
    if writes and not dry_run:
        from pagerstream.connections import kafka_producer

        p = kafka_producer(settings, acks="all", enable_idempotence=True, max_request_size=16 * 2**20)
        await p.start()
        try:
            for topic, partition, key, value in writes:
                await p.send_and_wait(topic, value, key=key, partition=partition)
        finally:
            await p.stop()
    left = [{"topic": t["topic"], "kind": t["kind"], "matching_records": t["matching_records"],
             "expires_by": t.get("expires_by"), "note": t.get("note")}
            for t in s.report["topics"] if t["kind"] in ("log", "config", "sealed")]  # fmt: skip
    return {"subject": who.to_dict(), "dry_run": dry_run, "workers": {"group_state": state, "members": members},
            "actions": actions, "not_erased": left,
            "summary": {"redis_keys_deleted": sum(a["store"] == "redis" for a in actions),
                        "tombstoned": sum(a.get("action") == "tombstone" for a in actions),
                        "rewritten": sum(a.get("action") == "rewrite" for a in actions)}}  # fmt: skip


def erase(settings: Any, who: Subject, **kw: Any) -> dict[str, Any]:
    return asyncio.run(erase_async(settings, who, **kw))
