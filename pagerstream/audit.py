"""The audit trail: every decision of the incident stage and every action of a person or API client,
appended to the `audit` topic as a hash chain that `pagerstream audit verify` checks.

    incident stage ─┐                        (JSON entries, 1 partition)
    feedback API  ──┼──► audit.intake ──audit-chain agent──► audit (AuditRecord, 1 partition, kept forever)
    Slack / links ──┤                     seq, prev_hash, hash = sha256(prev_hash || canonical record)
    CLI (apply,     ┘
    tokens, keys)

Why one chain on a single-partition topic: one total order of everything that happened, one head to
anchor outside Kafka (`pagerstream audit head`), and a verifier that needs no merge rules. One writer
keeps it: the `audit-chain` agent, which Faust runs for the one intake partition on exactly one worker
at a time; anyone else (other workers, the CLI) only appends unchained entries to `audit.intake`. The
volume is incident-level decisions and human actions, not alerts, well within one partition.

The chain head is not stored anywhere but the topic: when the agent gets the intake partition it
flushes its producer and reads the last records of `audit`, so a crash or a move to another worker
continues from what is really there. Decisions carry deterministic entry ids (incident#version:change)
and the agent skips ids it has written recently, so the at-least-once replays of the stream do not
duplicate them.

What verify detects: a record whose content no longer matches its hash (altered), a seq gap (missing
records), a seq that goes backwards or repeats with other content (reordered, or a forged copy
appended later), a prev_hash that does not link to its predecessor, and with --from-beginning a chain
that does not start at seq 0. An exact duplicate of the previous record (a producer retry) is only
noted. What a hash chain cannot show on its own: a whole topic rewritten consistently by someone with
admin rights on Kafka; record `pagerstream audit head` somewhere else and pass it to --anchor.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

import click

if TYPE_CHECKING:
    from pagerstream.config import Settings
    from pagerstream.connections import KafkaTarget

log = logging.getLogger("pagerstream.audit")

GENESIS = "0" * 64
INTAKE_TOPIC = "audit.intake"  # logical name; the topic prefix is added
INTAKE_RETENTION = timedelta(days=7)
RECOVER_TAIL = 5000  # records read back when the writer (re)starts: the head and recent entry ids
DEDUP_WINDOW = 20_000  # entry ids remembered by the writer
AUDIT_KEY = b"audit"
_FIELDS = ("seq", "prev_hash", "at", "entry_id", "actor", "action", "object", "details_json")
# Incident changes that are decisions about paging; per-alert bookkeeping (alert_added, duplicate,
# alert_resolved) stays on the incidents topic unless it made a PagerDuty call.
AUDITED_CHANGES = frozenset({"opened", "acknowledged", "resolved", "auto_resolved", "dropped"})


# --- the chain ----------------------------------------------------------------------------------------
def canonical(rec: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: every field but `hash`, as sorted, compact, ASCII JSON."""
    return json.dumps({k: rec.get(k) for k in _FIELDS}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def chain_hash(prev_hash: str, rec: dict[str, Any]) -> str:
    """sha256(prev_hash's 32 bytes || canonical(rec)), hex. ValueError if prev_hash is not 64 hex."""
    prev = bytes.fromhex(prev_hash)
    if len(prev) != 32:
        raise ValueError("prev_hash is not 32 bytes")
    return hashlib.sha256(prev + canonical(rec)).hexdigest()


def self_consistent(rec: dict[str, Any]) -> bool:
    try:
        return chain_hash(rec["prev_hash"], rec) == rec["hash"]
    except (ValueError, KeyError, TypeError):
        return False


def make_entry(actor: str, action: str, obj: str | None, details: dict[str, Any] | None = None, *,
               entry_id: str | None = None, at: int | None = None) -> dict[str, Any]:
    """An unchained entry, as it travels on audit.intake."""
    return {"id": entry_id or uuid.uuid4().hex, "at": int(at if at is not None else time.time() * 1000),
            "actor": str(actor)[:200], "action": str(action)[:100], "object": None if obj is None else str(obj)[:300],
            "details": details or {}}


def parse_entry(raw: bytes) -> dict[str, Any]:
    """An intake record, checked; ValueError says what is wrong."""
    try:
        e = json.loads(raw)
    except (ValueError, UnicodeDecodeError, TypeError):
        raise ValueError("audit intake record is not JSON") from None
    if not isinstance(e, dict):
        raise ValueError("audit intake record is not an object")
    for k, t in (("id", str), ("actor", str), ("action", str)):
        if not isinstance(e.get(k), t) or not e[k]:
            raise ValueError(f"audit intake record has no {k}")
    if not isinstance(e.get("at"), int) or isinstance(e.get("at"), bool):
        raise ValueError("audit intake record has no at (epoch ms)")
    if e.get("object") is not None and not isinstance(e["object"], str):
        raise ValueError("audit intake record's object is not a string")
    if not isinstance(e.get("details", {}), dict):
        raise ValueError("audit intake record's details is not an object")
    return e


class ChainWriter:
    """The head of the chain and the entry ids written recently (pure: the agent does the I/O)."""

    def __init__(self) -> None:
        self.seq = -1
        self.head = GENESIS
        self._ids: set[str] = set()
        self._order: deque[str] = deque()

    def _remember(self, entry_id: str) -> None:
        if entry_id in self._ids:
            return
        self._ids.add(entry_id)
        self._order.append(entry_id)
        while len(self._order) > DEDUP_WINDOW:
            self._ids.discard(self._order.popleft())

    def recover(self, records: Iterable[dict[str, Any]]) -> None:
        """Continue after the last record (in topic order) whose hash matches its content."""
        for r in records:
            if isinstance(r.get("entry_id"), str):
                self._remember(r["entry_id"])
            if self_consistent(r) and isinstance(r.get("seq"), int):
                self.seq, self.head = r["seq"], r["hash"]

    def append(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        """The chained record for an entry, or None for an entry id already written."""
        if entry["id"] in self._ids:
            return None
        rec = {"seq": self.seq + 1, "prev_hash": self.head, "at": int(entry["at"]), "entry_id": entry["id"],
               "actor": entry["actor"], "action": entry["action"], "object": entry.get("object"),
               "details_json": json.dumps(entry.get("details") or {}, sort_keys=True, separators=(",", ":"),
                                          default=str)}
        rec["hash"] = chain_hash(self.head, rec)
        self.seq, self.head = rec["seq"], rec["hash"]
        self._remember(entry["id"])
        return rec


@dataclass
class Report:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    first_offset: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_records(items: Iterable[tuple[int, dict[str, Any] | None]], *, from_beginning: bool,
                   anchors: dict[int, str] | None = None) -> Report:
    """Check records in topic order; (offset, None) is a record that could not be decoded.

    Each problem names the offset and seq where it is seen. After an out-of-order record the chain
    goes on from the last record that was in order, so one forged record is one problem."""
    rep = Report()
    prev: dict[str, Any] | None = None
    seen_hash_at: dict[int, str] = {}
    for off, r in items:
        if rep.first_offset is None:
            rep.first_offset = off
        if r is None:
            rep.problems.append(f"offset {off}: not a readable AuditRecord (foreign or corrupted bytes)")
            continue
        rep.records += 1
        seq = r.get("seq")
        where = f"offset {off} seq {seq}"
        if not self_consistent(r):
            rep.problems.append(f"{where}: altered: the hash does not match the record's content")
        if prev is None:
            if from_beginning and (seq != 0 or r.get("prev_hash") != GENESIS):
                rep.problems.append(f"{where}: the chain does not start at seq 0 with the genesis prev_hash "
                                    "(records before it are missing)")
            prev = r
            rep.first_seq = seq
            seen_hash_at[seq] = r.get("hash")
            continue
        if seq == prev["seq"] and r.get("hash") == prev.get("hash") and canonical(r) == canonical(prev):
            rep.notes.append(f"{where}: exact duplicate of the previous record (a producer retry), ignored")
            rep.records -= 1
            continue
        if not isinstance(seq, int) or seq <= prev["seq"]:
            orig = seen_hash_at.get(seq) if isinstance(seq, int) else None
            what = "a changed copy of an earlier record" if orig and orig != r.get("hash") else "out of order"
            rep.problems.append(f"{where}: reordered or forged: seq {seq} after seq {prev['seq']} ({what})")
            continue
        if seq > prev["seq"] + 1:
            missing = f"seq {prev['seq'] + 1}" + (f"..{seq - 1}" if seq - 1 > prev["seq"] + 1 else "")
            rep.problems.append(f"{where}: missing records: {missing} (after the record of seq {prev['seq']})")
        elif r.get("prev_hash") != prev.get("hash"):
            rep.problems.append(f"{where}: chain broken: prev_hash does not link to seq {prev['seq']} "
                                "(a record was altered or inserted)")
        prev = r
        seen_hash_at[seq] = r.get("hash")
    if prev is not None:
        rep.last_seq, rep.head = prev["seq"], prev.get("hash")
    elif from_beginning and not rep.problems:
        rep.notes.append("the audit topic is empty")
    for seq, h in (anchors or {}).items():
        got = seen_hash_at.get(seq)
        if got is None:
            rep.problems.append(f"anchor seq {seq}: no such record in what was read")
        elif got != h:
            rep.problems.append(f"anchor seq {seq}: hash {got[:16]}… differs from the anchored {h[:16]}… "
                                "(the chain was rewritten)")
    return rep


# --- reading the topic --------------------------------------------------------------------------------
async def read_audit(bootstrap: KafkaTarget, topic: str, *, last: int | None = None) -> list[tuple[int, bytes]]:
    """(offset, value) of the audit topic's records: all of them, or the last `last`."""
    from aiokafka import TopicPartition

    from pagerstream.connections import kafka_consumer

    c = kafka_consumer(bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest")
    await c.start()
    try:
        if topic not in await c.topics():
            raise LookupError(f"topic {topic} does not exist")
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        begin = (await c.beginning_offsets([tp]))[tp]
        end = (await c.end_offsets([tp]))[tp]
        start = begin if last is None else max(begin, end - last)
        out: list[tuple[int, bytes]] = []
        if end <= start:
            return out
        c.seek(tp, start)
        while await c.position(tp) < end:
            batch = await c.getmany(tp, timeout_ms=1000)
            out.extend((m.offset, m.value) for m in batch.get(tp, []) if m.offset < end)
        return out
    finally:
        await c.stop()


def decode_items(items: list[tuple[int, bytes]]) -> list[tuple[int, dict[str, Any] | None]]:
    from pagerstream.schemas import AvroCodec, DecodeError

    codec = AvroCodec("audit_record")
    out: list[tuple[int, dict[str, Any] | None]] = []
    for off, raw in items:
        try:
            out.append((off, codec.decode(raw)))
        except DecodeError:
            out.append((off, None))
    return out


# --- in the worker ------------------------------------------------------------------------------------
def decision_entry(o: Any) -> dict[str, Any] | None:
    """The audit entry of one incident change, or None when it is per-alert bookkeeping."""
    if o.change not in AUDITED_CHANGES and o.pd_action is None:
        return None
    inc, a = o.incident, o.alert
    details: dict[str, Any] = {"change": o.change, "detail": o.detail, "reason": (o.reason or "")[:500],
                               "pagerduty_action": o.pd_action, "version": inc.version, "state": inc.state,
                               "service": inc.service, "severity": inc.severity,
                               "routing_key_hint": (inc.routing_key or "")[-4:],
                               "alert_id": a.id if a is not None else None}
    route = getattr(inc, "route", None)
    if route and o.change == "opened":
        details["route"] = {k: route.get(k) for k in ("rule", "routing_key_name", "escalation_policy_id",
                                                      "responder_id")}
    pause = getattr(inc, "pause", None)
    if pause and o.detail == "paused":
        details["paused_until"] = pause.get("paused_until") if isinstance(pause, dict) else None
    iid = inc.incident_id or ""
    obj = iid or (f"alert:{a.id}" if a is not None else None)
    eid = f"decision:{iid}#{inc.version}:{o.change}" if iid else f"decision:alert:{a.id if a else uuid.uuid4().hex}:{o.change}"
    action = f"incident.{o.change}" + (f".{o.detail}" if o.detail else "")
    at = o.at if o.at is not None else (a.received_at if a is not None else inc.last_activity_at)
    return make_entry("system:incident-stage", action, obj, details, entry_id=eid, at=at)


class AuditMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter

        r = registry
        self.appended = Counter("pagerstream_audit_appended", "Records appended to the audit chain", registry=r)
        self.skipped = Counter("pagerstream_audit_duplicates_skipped", "Replayed entries not written again",
                               registry=r)
        self.failed = Counter("pagerstream_audit_submit_failures", "Audit entries that could not be submitted",
                              ["kind"], registry=r)


class DenialDigest:
    """Refused requests (401, 403, 429) summarised into the audit trail.

    The first refusal of one kind (client address, route, status) in a window is recorded at once;
    repeats in the same window are counted and recorded as one entry when the window closes. So a
    scanner or a misconfigured sender shows up within a second, yet a flood of bad requests costs at
    most one audit entry per kind per window, and at most `max_kinds` kinds are held (the rest are
    counted together as `overflow`). Reasons are the worker's own messages: never the presented key.
    """

    def __init__(self, submit: Callable[[dict[str, Any]], Awaitable[bool]], *, window_s: float = 60.0,
                 max_kinds: int = 500, clock: Callable[[], float] = time.time) -> None:
        self.submit = submit
        self.window_s = window_s
        self.max_kinds = max_kinds
        self.clock = clock
        self.open: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.overflow = 0
        self._pending: list[dict[str, Any]] = []

    def note(self, client: str, route: str, status: int, kind: str, reason: str) -> None:
        k = (client, route, status)
        now = self.clock()
        w = self.open.get(k)
        if w is None:
            if len(self.open) >= self.max_kinds:
                self.overflow += 1
                return
            self.open[k] = {"first": now, "last": now, "repeats": 0, "kind": kind, "reason": reason[:200]}
            self._pending.append(self._entry(k, self.open[k], first=True))
            return
        w["last"] = now
        w["repeats"] += 1

    def _entry(self, k: tuple[str, str, int], w: dict[str, Any], *, first: bool) -> dict[str, Any]:
        client, route, status = k
        action = "auth.throttled" if status == 429 else "auth.denied"
        details = {"status": status, "via": w["kind"], "reason": w["reason"], "client": client}
        if not first:
            details.update(repeats=w["repeats"], first_at=round(w["first"], 3), last_at=round(w["last"], 3),
                           window_s=self.window_s)
        return make_entry(f"client:{client}", action + ("" if first else ".repeated"), route, details)

    def due(self) -> list[dict[str, Any]]:
        """Entries to write now: first refusals, and the summaries of windows that closed."""
        now = self.clock()
        out, self._pending = self._pending, []
        for k, w in list(self.open.items()):
            if now - w["first"] >= self.window_s:
                del self.open[k]
                if w["repeats"]:
                    out.append(self._entry(k, w, first=False))
        if self.overflow and not self.open:
            out.append(make_entry("client:*", "auth.denied.overflow", None,
                                  {"refusals": self.overflow, "max_kinds": self.max_kinds}))
            self.overflow = 0
        return out

    async def flush(self) -> int:
        n = 0
        for e in self.due():
            n += bool(await self.submit(e))
        return n


class AuditLog:
    """Mixed into a worker by `install`: the intake topic, the chain agent, and the call sites' API."""

    def __init__(self, pipeline: Any, app: Any) -> None:
        from pagerstream.schemas import AvroCodec

        self.p = pipeline
        self.app = app
        s = pipeline.settings
        self.bootstrap = s  # read_audit: the bootstrap servers and TLS/SASL settings of the worker
        self.topic_name = pipeline.topic_names["audit"]
        self.intake_name = s.topic_prefix + INTAKE_TOPIC
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.intake = app.topic(self.intake_name, internal=True, partitions=1, retention=INTAKE_RETENTION,
                                deleting=True, **raw)
        self.out = app.topic(self.topic_name, internal=False, **raw)
        self.codec = AvroCodec("audit_record")
        self.writer: ChainWriter | None = None
        m = AuditMetrics(pipeline.metrics.registry)
        self.m_appended, self.m_skipped, self.m_failed = m.appended, m.skipped, m.failed

    @classmethod
    def install(cls, pipeline: Any, app: Any) -> "AuditLog":
        a = cls(pipeline, app)
        app.agent(a.intake, name="audit-chain", concurrency=1)(a._agent)

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **_: Any) -> None:
            if any(tp.topic == a.intake_name for tp in revoked):
                a.writer = None  # another worker may write next: re-read the head when it comes back

        app.web.web_app.middlewares.append(a._link_middleware())
        auth = getattr(pipeline, "auth", None)
        if auth is not None:  # refused requests, summarised (DenialDigest)
            a.denials = DenialDigest(lambda e: a._submit(e, wait=False))
            auth.on_denied = a.denials.note

            @app.timer(interval=1.0)
            async def _denials() -> None:
                await a.denials.flush()
        return a

    # --- submitting ---------------------------------------------------------------------------------
    async def _submit(self, entry: dict[str, Any], *, wait: bool) -> bool:
        try:
            fut = await self.intake.send(key=AUDIT_KEY, value=json.dumps(entry, default=str).encode())
            if wait:
                await asyncio.wait_for(fut, timeout=15)
            return True
        except Exception as e:  # noqa: BLE001 - the action happened; say loudly that it is not audited
            self.m_failed.labels("action" if wait else "decision").inc()
            log.error("audit entry %s (%s) not submitted: %s", entry.get("action"), entry.get("id"),
                      type(e).__name__)
            return False

    async def decisions(self, outs: Iterable[Any]) -> None:
        """From the incident stage, for what it emits: sent, not awaited (Faust flushes the producer
        before it commits the stage's offsets, so the entries are durable before the alert is done)."""
        for o in outs:
            e = decision_entry(o)
            if e is not None:
                await self._submit(e, wait=False)

    async def action(self, actor: str, action: str, obj: str | None, details: dict[str, Any] | None = None) -> bool:
        """A person's or client's action, after it happened: waits for Kafka's acknowledgement."""
        return await self._submit(make_entry(actor, action, obj, details), wait=True)

    async def request_action(self, request: Any, action: str, obj: str | None,
                             details: dict[str, Any] | None = None) -> bool:
        from pagerstream.auth import PRINCIPAL

        p = request.get(PRINCIPAL)
        return await self.action(p.actor if p is not None else "anonymous", action, obj, details)

    def _link_middleware(self) -> Any:
        """One-click action links (/act) act through PagerDuty inside their own handler: record the
        ones that acted (POST answered 200; the handler verified the link's signature)."""
        from aiohttp import web

        @web.middleware
        async def audit_links(request: web.Request, handler: Any) -> web.StreamResponse:
            resp = await handler(request)
            info = request.match_info
            if (request.method == "POST" and resp.status == 200 and info.http_exception is None
                    and info.route.resource is not None and info.route.resource.canonical == "/act"):
                form = await request.post()
                who = " ".join(str(form.get("name", "")).split())[:80] or "anonymous"
                await self.action(f"link:{who}", f"incident.{str(form.get('a', ''))[:20]}", str(form.get("i", ""))[:100],
                                  {"via": "action link", "remote": request.remote})
            return resp

        return audit_links

    # --- the writer ---------------------------------------------------------------------------------
    async def _recover(self) -> ChainWriter:
        await self.app.producer.flush()  # what this worker sent before is in the topic before we read it
        items = decode_items(await read_audit(self.bootstrap, self.topic_name, last=RECOVER_TAIL))
        w = ChainWriter()
        w.recover(r for _, r in items if r is not None)
        log.info("audit chain: continuing after seq %d", w.seq)
        return w

    def _on_sent(self, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is not None:
            log.error("audit record not written (%s); re-reading the chain head before the next one",
                      "cancelled" if fut.cancelled() else type(fut.exception()).__name__)
            self.writer = None

    async def _agent(self, stream: Any) -> Any:
        async for event in stream.events():
            try:
                entry = parse_entry(event.value)
            except ValueError as e:
                await self.p._dead_letter("audit", str(e)[:2000], e, event.message)
                continue
            while self.writer is None:
                try:
                    self.writer = await self._recover()
                except Exception as e:  # noqa: BLE001 - Kafka hiccup: the chain waits, nothing is lost
                    log.warning("audit chain head not read (%s); retrying", type(e).__name__)
                    await asyncio.sleep(1.0)
            rec = self.writer.append(entry)
            if rec is None:
                self.m_skipped.inc()
                yield None
                continue
            fut = await self.out.send(key=AUDIT_KEY, value=self.codec.encode(rec), partition=0)
            if hasattr(fut, "add_done_callback"):
                fut.add_done_callback(self._on_sent)
            self.m_appended.inc()
            yield None


# --- from the command line ----------------------------------------------------------------------------
def cli_actor() -> str:
    """Who runs this command: PAGERSTREAM_ACTOR, else the OS user and host."""
    v = os.environ.get("PAGERSTREAM_ACTOR", "").strip()
    if v:
        return "cli:" + v[:100]
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


async def _submit_async(s: "Settings", entry: dict[str, Any]) -> None:
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    from pagerstream.connections import kafka_admin, kafka_producer

    topic = s.topic_prefix + INTAKE_TOPIC
    admin = kafka_admin(s, request_timeout_ms=8000)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            cfg = {"retention.ms": str(int(INTAKE_RETENTION.total_seconds() * 1000)), "cleanup.policy": "delete"}
            try:
                await admin.create_topics([NewTopic(topic, 1, s.replication_factor, topic_configs=cfg)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    p = kafka_producer(s, acks="all", enable_idempotence=True, request_timeout_ms=8000)
    await p.start()
    try:
        await p.send_and_wait(topic, json.dumps(entry, default=str).encode(), key=AUDIT_KEY)
    finally:
        await p.stop()


def submit_from_cli(s: "Settings", action: str, obj: str | None, details: dict[str, Any] | None = None) -> bool:
    """Append an entry from a command; a Kafka that cannot be reached is reported, not fatal."""
    entry = make_entry(cli_actor(), action, obj, details)
    try:
        asyncio.run(asyncio.wait_for(_submit_async(s, entry), timeout=15))
        return True
    except Exception as e:  # noqa: BLE001
        click.echo(f"pagerstream: WARNING: {action} was not recorded in the audit trail "
                   f"(Kafka: {type(e).__name__})", err=True)
        return False


def audit_cli_command(cmd: click.Command, action: str) -> None:
    """Record every run of a command (e.g. `pagerduty apply`) with its outcome, after it ran."""
    inner = cmd.callback
    if inner is None or getattr(inner, "_audited", False):
        return

    def run(*args: Any, **kw: Any) -> Any:
        outcome = "ok"
        try:
            return inner(*args, **kw)
        except SystemExit as e:
            outcome = f"exit {e.code}"
            raise
        except BaseException as e:
            outcome = f"error {type(e).__name__}"
            raise
        finally:
            details: dict[str, Any] = {"outcome": outcome}
            path = kw.get("path")
            if path and os.path.isfile(path):
                with open(path, "rb") as f:
                    details["document_sha256"] = hashlib.sha256(f.read()).hexdigest()
            details.update({k: v for k, v in kw.items() if k in ("tenant_id", "yes", "days", "reset_rotations")})
            from pagerstream.config import ConfigError, load_settings

            try:
                submit_from_cli(load_settings(), action, path, details)
            except ConfigError:
                click.echo(f"pagerstream: WARNING: {action} was not recorded in the audit trail (configuration)",
                           err=True)

    run._audited = True  # type: ignore[attr-defined]
    run.__doc__ = inner.__doc__
    cmd.callback = run


def _settings() -> "Settings":
    from pagerstream.config import load_settings_or_exit

    return load_settings_or_exit()


def _parse_anchor(value: str) -> tuple[int, str]:
    seq, _, h = value.partition(":")
    if not seq.isdigit() or len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise click.BadParameter("expected SEQ:HASH (the output of `pagerstream audit head`)")
    return int(seq), h


@click.group("audit")
def audit_group() -> None:
    """The hash-chained audit trail (topic `audit`)."""


@audit_group.command("verify")
@click.option("--from-beginning", is_flag=True, help="Read the whole topic and require the chain to start at seq 0")
@click.option("--last", default=10_000, show_default=True, help="Without --from-beginning: check this many latest records")
@click.option("--anchor", "anchors", multiple=True, help="SEQ:HASH recorded earlier (audit head); must still match")
@click.option("--quiet", is_flag=True, help="Print problems and the summary only")
def audit_verify(from_beginning: bool, last: int, anchors: tuple[str, ...], quiet: bool) -> None:
    """Check the chain; print every altered, missing or reordered record; exit 1 if any."""
    from pagerstream.streams.topics import topic_specs

    s = _settings()
    topic = topic_specs(s.topic_prefix)["audit"].name
    try:
        items = asyncio.run(read_audit(s, topic, last=None if from_beginning else last))
    except LookupError as e:
        click.echo(f"pagerstream: {e}", err=True)
        sys.exit(2)
    rep = verify_records(decode_items(items), from_beginning=from_beginning,
                         anchors=dict(_parse_anchor(a) for a in anchors))
    for p in rep.problems:
        click.echo(f"PROBLEM {p}")
    if not quiet:
        for n in rep.notes:
            click.echo(f"note    {n}")
    span = f"seq {rep.first_seq}..{rep.last_seq}" if rep.records else "no records"
    scope = "from the beginning" if from_beginning else f"last {last}"
    if rep.ok:
        click.echo(f"audit chain OK: {rep.records} records ({scope}), {span}, head {rep.head}")
    else:
        click.echo(f"audit chain FAILED: {len(rep.problems)} problem(s) in {rep.records} records ({scope}), {span}")
        sys.exit(1)


@audit_group.command("head")
def audit_head() -> None:
    """Print SEQ:HASH of the last record, to keep outside Kafka and pass to `verify --anchor` later."""
    from pagerstream.streams.topics import topic_specs

    s = _settings()
    topic = topic_specs(s.topic_prefix)["audit"].name
    try:
        items = decode_items(asyncio.run(read_audit(s, topic, last=1)))
    except LookupError as e:
        click.echo(f"pagerstream: {e}", err=True)
        sys.exit(2)
    if not items or items[-1][1] is None:
        click.echo("pagerstream: the audit topic is empty (or its last record is unreadable)", err=True)
        sys.exit(1)
    r = items[-1][1]
    click.echo(f"{r['seq']}:{r['hash']}")
