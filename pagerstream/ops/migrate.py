"""`pagerstream migrate`: bring live topics and schemas to this release, and move table state between app ids.

Topic and schema migrations are deploy's plan without the secret checks (`--check` only reports; exit 1
when something is pending). What is "safe" and applied: creating missing topics, setting retention.ms,
cleanup.policy and max.message.bytes to TopicSpec's values (other dynamic configs are kept), registering
schema versions. What is never applied: partition changes (reported), deleting anything.

Faust table state across app versions. A Faust table lives in the changelog topic
`<PAGERSTREAM_APP_ID>-<table>-changelog` (plus a local RocksDB cache of it under
`<PAGERSTREAM_DATADIR>/v1/tables/<table>-<partition>.db`, a path without the app id). A new app id means
new, empty changelogs and a new consumer group: the new workers would start with no incident state and
would re-read every retained input. `migrate state --from-app-id A --to-app-id B` therefore:

  1. refuses while either consumer group has members (stop all workers of A and B first);
  2. per table (all `A-*-changelog` topics, or the --table ones): reads the changelog up to its end
     offsets, keeps the latest value per (partition, key), drops keys whose latest record is a tombstone,
     and writes those records to `B-<table>-changelog` into the *same partition* (Faust places a table key
     in the partition of the stream record that wrote it, not by hashing the key), creating that topic
     compacted with the source's partition count when missing, refusing when it is not empty (unless --force);
  3. copies the committed offsets of group A to group B for the input topics (not A's own internal
     topics), so B continues where A stopped instead of replaying retained input.

Workers of B must start with an empty PAGERSTREAM_DATADIR (or without its v1/tables): the RocksDB files
there carry A's changelog offsets, which mean nothing in B's changelogs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pagerstream.config import Settings

LEADER_SUFFIX = "-__assignor-__leader"
CHANGELOG_SUFFIX = "-changelog"


# --- discovery (pure) ------------------------------------------------------------------------------------
def app_ids_on_cluster(topics: Iterable[str]) -> set[str]:
    """App ids that ran a Faust worker here (each creates `<app id>-__assignor-__leader`)."""
    return {t[: -len(LEADER_SUFFIX)] for t in topics if t.endswith(LEADER_SUFFIX)}


def changelog_tables(topics: Iterable[str], app_id: str, others: Iterable[str] = ()) -> dict[str, str]:
    """table name -> changelog topic of `app_id`. A topic that belongs to a longer app id that also ran here,
    or is one of `others` (`pagerstream-2-groups-changelog` is not table `2-groups` of `pagerstream`), is
    left out."""
    topics = list(topics)
    ids = app_ids_on_cluster(topics) | {app_id} | set(others)
    out: dict[str, str] = {}
    prefix = app_id + "-"
    for t in topics:
        if not (t.startswith(prefix) and t.endswith(CHANGELOG_SUFFIX)):
            continue
        owner = max((i for i in ids if t.startswith(i + "-")), key=len)
        if owner != app_id:
            continue
        table = t[len(prefix): -len(CHANGELOG_SUFFIX)]
        if table:
            out[table] = t
    return out


_VERSION_TAIL = re.compile(r"([-_.]?v?\d+)$")


def related_app_ids(topics: Iterable[str], app_id: str) -> dict[str, int]:
    """Other app ids with changelogs whose name differs from `app_id` only by a version tail
    (pagerstream, pagerstream-v1, pagerstream-v2): candidates to migrate state from. -> number of tables."""
    topics = list(topics)
    stem = _VERSION_TAIL.sub("", app_id)
    out = {}
    for other in app_ids_on_cluster(topics):
        if other != app_id and _VERSION_TAIL.sub("", other) == stem:
            n = len(changelog_tables(topics, other))
            if n:
                out[other] = n
    return out


def latest_per_key(records: Iterable[Any]) -> tuple[dict[tuple[int, bytes], Any], int, int]:
    """Compaction as Kafka would do it, in memory: (partition, key) -> the last record; records with a
    tombstone as their latest value are removed. Returns (live records, records read, tombstoned keys)."""
    latest: dict[tuple[int, bytes], Any] = {}
    n = 0
    for m in records:
        n += 1
        latest[(m.partition, m.key)] = m
    live = {k: m for k, m in latest.items() if m.value is not None}
    return live, n, len(latest) - len(live)


# --- topic/schema migrations -----------------------------------------------------------------------------
@dataclass
class MigratePlan:
    actions: list[Any]
    schemas: Any
    state_hints: list[str]

    @property
    def pending(self) -> list[str]:
        out = [a.describe() for a in self.actions if a.kind != "ok"]
        if self.schemas and self.schemas.to_write:
            out.append(f"register {len(self.schemas.to_write)} schema versions")
        return out

    @property
    def problems(self) -> list[str]:
        p = [x for a in self.actions for x in a.problems]
        if self.schemas:
            p += self.schemas.registry_problems
            if self.schemas.unknown_fingerprints:
                p.append(f"{len(self.schemas.unknown_fingerprints)} registered schema fingerprints are unknown to "
                         "this release (a newer release was deployed)")
        return p


async def plan(s: Settings) -> MigratePlan:
    from pagerstream.connections import kafka_admin
    from pagerstream.ops.deploy import release, schema_plan, topic_plan

    actions = await topic_plan(s)
    schemas = await schema_plan(s, release())
    admin = kafka_admin(s, request_timeout_ms=15000)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    hints = []
    mine = changelog_tables(topics, s.app_id)
    for other, n in sorted(related_app_ids(topics, s.app_id).items()):
        if not mine:
            hints.append(f"app id {other} has state ({n} changelog topics) and {s.app_id} has none: if "
                         f"{s.app_id} replaces it, stop its workers and run `pagerstream migrate state "
                         f"--from-app-id {other} --to-app-id {s.app_id}` before starting the new ones")
        else:
            hints.append(f"app id {other} also has state ({n} changelog topics); {s.app_id} has {len(mine)}")
    return MigratePlan(actions, schemas, hints)


async def apply(s: Settings, p: MigratePlan) -> list[str]:
    from pagerstream.ops.deploy import apply_topics, register_schemas

    errors = await apply_topics(s, [a for a in p.actions if a.kind in ("create", "alter")])
    if p.schemas and p.schemas.to_write:
        try:
            await register_schemas(s, p.schemas)
        except Exception as e:  # noqa: BLE001
            errors.append(f"schema registration failed: {type(e).__name__}: {e}")
    return errors


# --- state -----------------------------------------------------------------------------------------------
class StateMigrationError(RuntimeError):
    pass


@dataclass
class TableCopy:
    table: str
    source: str
    target: str
    partitions: int
    read: int = 0
    written: int = 0
    tombstoned: int = 0
    created_target: bool = False


@dataclass
class StateReport:
    from_app_id: str
    to_app_id: str
    dry_run: bool
    tables: list[TableCopy] = field(default_factory=list)
    offsets_copied: int = 0
    offsets_skipped: str = ""


def _group_active(resp: Any, group: str) -> bool:
    for g in resp.to_object().get("groups", []):
        if g.get("group") == group and g.get("error_code", 0) == 0:
            return bool(g.get("members")) or g.get("state") in ("Stable", "PreparingRebalance", "CompletingRebalance")
    return False


async def migrate_state(s: Settings, from_app_id: str, to_app_id: str, tables: list[str] | None = None, *,
                        dry_run: bool = False, force: bool = False, offsets: bool = True) -> StateReport:
    from aiokafka.admin import NewTopic
    from aiokafka.structs import OffsetAndMetadata

    from pagerstream.connections import kafka_admin, kafka_consumer, kafka_producer
    from pagerstream.ops import read_to_end, topic_sizes
    from pagerstream.ops.deploy import fetch_live

    if from_app_id == to_app_id:
        raise StateMigrationError("--from-app-id and --to-app-id are the same")
    bs = s  # every client below: bootstrap servers and TLS/SASL settings from s
    rep = StateReport(from_app_id, to_app_id, dry_run)
    admin = kafka_admin(bs, request_timeout_ms=30000)
    await admin.start()
    try:
        for group in (from_app_id, to_app_id):
            resps = await admin.describe_consumer_groups([group])
            if any(_group_active(r, group) for r in resps) and not force:
                raise StateMigrationError(f"consumer group {group} has active members: stop its workers first "
                                          "(state copied while they run would be out of date or overwritten)")
        topics = await admin.list_topics()
        found = changelog_tables(topics, from_app_id, others=[to_app_id])
        if not found:
            raise StateMigrationError(f"no changelog topics of app id {from_app_id} (expected {from_app_id}-<table>-changelog)")
        wanted = tables or sorted(found)
        missing = [t for t in wanted if t not in found]
        if missing:
            raise StateMigrationError(f"no changelog for table(s) {', '.join(missing)} of {from_app_id}; it has: "
                                      + ", ".join(sorted(found)))
        live = await fetch_live(admin, [found[t] for t in wanted] + [f"{to_app_id}-{t}{CHANGELOG_SUFFIX}" for t in wanted])
        # check every table before writing any
        for t in wanted:
            src, dst = found[t], f"{to_app_id}-{t}{CHANGELOG_SUFFIX}"
            tc = TableCopy(t, src, dst, live[src].partitions)
            if dst in live:
                if live[dst].partitions != tc.partitions:
                    raise StateMigrationError(f"{dst} has {live[dst].partitions} partitions, {src} has {tc.partitions}")
                n = (await topic_sizes(bs, [dst])).get(dst, 0)
                if n and not force:
                    raise StateMigrationError(f"{dst} already holds {n} records (did {to_app_id} run already?); "
                                              "use --force to append the copy anyway (its values become the latest)")
            else:
                tc.created_target = True
            rep.tables.append(tc)
        prod = None if dry_run else kafka_producer(bs, acks="all", enable_idempotence=True,
                                                   max_request_size=16 * 2**20)
        if prod:
            await prod.start()
        try:
            for tc in rep.tables:
                if tc.created_target and not dry_run:
                    src_dyn = live[tc.source].dynamic
                    cfg = {**src_dyn, "cleanup.policy": src_dyn.get("cleanup.policy", "compact")}
                    await admin.create_topics([NewTopic(tc.target, tc.partitions, s.replication_factor,
                                                        topic_configs=cfg)])
                recs = await read_to_end(bs, tc.source)
                keep, tc.read, tc.tombstoned = latest_per_key(recs)
                tc.written = len(keep)
                if prod:
                    for (part, _), m in sorted(keep.items(), key=lambda kv: (kv[0][0], kv[1].offset)):
                        await prod.send(tc.target, m.value, key=m.key, partition=part,
                                        headers=list(m.headers or ()))
                    await prod.flush()
        finally:
            if prod:
                await prod.stop()
        if offsets:
            src_off = await admin.list_consumer_group_offsets(from_app_id)
            internal = from_app_id + "-"
            copy = {tp: om.offset for tp, om in src_off.items()
                    if om.offset is not None and om.offset >= 0 and not tp.topic.startswith(internal)}
            dst_off = await admin.list_consumer_group_offsets(to_app_id)
            if dst_off and not force:
                rep.offsets_skipped = f"group {to_app_id} already has committed offsets (kept; --force overwrites)"
            elif not copy:
                rep.offsets_skipped = f"group {from_app_id} has no committed offsets"
            else:
                rep.offsets_copied = len(copy)
                if not dry_run:
                    c = kafka_consumer(bs, group_id=to_app_id, enable_auto_commit=False)
                    await c.start()
                    try:
                        c.assign(list(copy))
                        await c.commit({tp: OffsetAndMetadata(off, "") for tp, off in copy.items()})
                    finally:
                        await c.stop()
        return rep
    finally:
        await admin.close()


def render_state(rep: StateReport) -> str:
    verb = "would copy" if rep.dry_run else "copied"
    L = [f"state {rep.from_app_id} -> {rep.to_app_id}{' (dry run)' if rep.dry_run else ''}"]
    for t in rep.tables:
        L.append(f"  {t.table:<20} {verb} {t.written} keys ({t.read} records read, {t.tombstoned} deleted keys "
                 f"dropped) {t.source} -> {t.target}{' (created)' if t.created_target else ''}")
    if rep.offsets_skipped:
        L.append(f"  offsets: {rep.offsets_skipped}")
    else:
        L.append(f"  offsets: {'would copy' if rep.dry_run else 'copied'} {rep.offsets_copied} committed "
                 f"partition offsets of group {rep.from_app_id} to group {rep.to_app_id}")
    L += ["next:",
          f"  start the workers with PAGERSTREAM_APP_ID={rep.to_app_id} and an EMPTY PAGERSTREAM_DATADIR",
          "  (the RocksDB files there hold the old app's changelog offsets), then",
          "  pagerstream health --full-check"]
    return "\n".join(L)


def render_plan(p: MigratePlan, *, check: bool, errors: Mapping[str, Any] | list[str] = ()) -> str:
    L = ["topics and schemas:"]
    pend = p.pending
    for x in pend:
        L.append(f"  {'pending' if check else 'applied'}: {x}")
    if not pend:
        L.append("  nothing to migrate: every topic and schema matches this release")
    for x in p.problems:
        L.append(f"  ✗ {x}")
    for e in errors:
        L.append(f"  ✗ {e}")
    if p.state_hints:
        L.append("state:")
        L += [f"  {h}" for h in p.state_hints]
    return "\n".join(L)
