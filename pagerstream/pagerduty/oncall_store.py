"""Who is on call, kept fresh in Redis, and how many open incidents each on-call person carries.

Sources of on-call truth, in the order `who_is_on_call(policy_id, at)` tries them:

1. Redis: a snapshot per escalation policy written by `refresh()` (or by an earlier fallback). It is
   used only if it describes `at`: taken at or before `at`, and `at` before its `valid_until` (the
   first hand-off PagerDuty or the local rendering knows of) and before `fetched + ttl`. The key
   expires at the same moment, so a snapshot never outlives a hand-off.
2. Schedules kept as code (`SchedulesAsCode`, rendered locally by pagerstream.pagerduty.oncall):
   no network, any instant.
3. The REST API (`GET /oncalls?escalation_policy_ids[]=..&since=..&until=..`), through the Redis
   read-through cache (`PagerDutyCache`) or a bare `PagerDutyREST`.

A fallback answer is written back to Redis only if it is about *now* (the Redis entry always
describes the present, never a what-if time of a dry run).

Redis layout (prefix default `pagerstream:oncall:<namespace>`):

    <p>:ep:<policy id>        HASH  meta -> {policy, source, at, valid_until, expires_at}
                                    level:<n> -> {users, until, next_users, next_at}
                                    expires at min(valid_until, at + ttl)
    <p>:open:<user id>        ZSET  incident id -> assigned at (ms); entries older than
                                    max_open_age are dropped (an incident whose resolve was lost
                                    cannot weigh on someone forever)
    <p>:assignees:<incident>  SET   user ids the incident is assigned to (for reassignments)
    <p>:load                  ZSET  user id -> open incidents (for listing; reads use <p>:open:*)

`note_assignment` is idempotent (a replayed assignment does not count twice), so it can be fed
at-least-once from the stream or from PagerDuty webhooks (incident.triggered/reassigned/resolved).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml
from redis.exceptions import RedisError

from pagerstream.pagerduty.oncall import Schedule, parse_schedule, resolve_escalation
from pagerstream.pagerduty.routing import (
    IncidentContext,
    LevelOnCall,
    OnCallSnapshot,
    OnCallUser,
    OnCallView,
    RouteDecision,
    RoutingConfig,
    _aware,
    _parse_dt,
)

log = logging.getLogger("pagerstream.pagerduty.oncall_store")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def _check_id(v: str, what: str) -> str:
    if not isinstance(v, str) or not _SAFE_ID.match(v):
        raise ValueError(f"{what} must be 1-128 characters [A-Za-z0-9._-]")
    return v


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(UTC)


# ---------------------------------------------------------------------------------------------
# schedules kept as code
# ---------------------------------------------------------------------------------------------

class SchedulesError(ValueError):
    def __init__(self, problems: list[tuple[str, str]], file: str = "<string>") -> None:
        self.problems = problems
        super().__init__(f"{file}: " + "; ".join(f"{w}: {m}" for w, m in problems))


@dataclass(frozen=True)
class SchedulesAsCode:
    """Escalation policies + v2 schedules + users, as a YAML file (the bodies you would PUT):

        version: 1
        users: {PUSER01: {name: ann, email: ann@example.com}}
        schedules:
          - {id: PSCHED1, time_zone: Europe/Berlin, schedule_layers: [...], overrides: [...]}
        escalation_policies:
          - {id: PEPDB01, name: Databases, escalation_rules: [{escalation_delay_in_minutes: 15,
             targets: [{type: schedule_reference, id: PSCHED1}]}]}
    """

    users: Mapping[str, OnCallUser]
    schedules: Mapping[str, Schedule]
    policies: Mapping[str, Mapping[str, Any]]

    @classmethod
    def parse(cls, text: str, *, file: str = "<string>") -> SchedulesAsCode:
        problems: list[tuple[str, str]] = []
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SchedulesError([("yaml", f"not valid YAML: {getattr(e, 'problem', None) or e}")], file) from None
        if not isinstance(doc, Mapping):
            raise SchedulesError([("(top)", "expected users, schedules, escalation_policies")], file)
        for k in doc:
            if k not in ("version", "users", "schedules", "escalation_policies"):
                problems.append((str(k), "unknown key (expected version, users, schedules, escalation_policies)"))
        users: dict[str, OnCallUser] = {}
        for uid, u in (doc.get("users") or {}).items():
            u = u or {}
            if not isinstance(u, Mapping):
                problems.append((f"users.{uid}", "expected {name, email}"))
                continue
            users[str(uid)] = OnCallUser(str(uid), u.get("name"), u.get("email"))
        schedules: dict[str, Schedule] = {}
        for i, s in enumerate(doc.get("schedules") or []):
            where = f"schedules[{i}]"
            if not isinstance(s, Mapping) or not s.get("id"):
                problems.append((where, "each schedule needs an id"))
                continue
            try:
                schedules[str(s["id"])] = parse_schedule(
                    s, overrides=s.get("overrides"), layer_order=s.get("layer_order", "request"),
                    turn_clock=s.get("turn_clock", "elapsed"))
            except (ValueError, KeyError, TypeError) as e:
                problems.append((f"{where} {s['id']}", f"{type(e).__name__}: {e}"))
        policies: dict[str, Mapping[str, Any]] = {}
        for i, p in enumerate(doc.get("escalation_policies") or []):
            where = f"escalation_policies[{i}]"
            if not isinstance(p, Mapping) or not p.get("id"):
                problems.append((where, "each escalation policy needs an id"))
                continue
            for j, rule in enumerate(p.get("escalation_rules") or []):
                for t in (rule or {}).get("targets") or []:
                    tt, tid = (t or {}).get("type"), (t or {}).get("id")
                    if tt in ("schedule_reference", "schedule") and tid not in schedules:
                        problems.append((f"{where}.escalation_rules[{j}]", f"unknown schedule {tid!r}"))
                    elif tt not in ("schedule_reference", "schedule", "user_reference", "user"):
                        problems.append((f"{where}.escalation_rules[{j}]", f"unsupported target type {tt!r}"))
            if not p.get("escalation_rules"):
                problems.append((where, "no escalation_rules"))
            policies[str(p["id"])] = p
        if problems:
            raise SchedulesError(problems, file)
        return cls(users, schedules, policies)

    @classmethod
    def load(cls, path: str | Path) -> SchedulesAsCode:
        return cls.parse(Path(path).read_text(encoding="utf-8"), file=str(path))

    def user(self, uid: str) -> OnCallUser:
        return self.users.get(uid) or OnCallUser(uid)

    def snapshot(self, policy_id: str, at: datetime, *, horizon: timedelta = timedelta(days=14)
                 ) -> OnCallSnapshot | None:
        """Who each level of `policy_id` pages at `at`, until when, and who comes next."""
        policy = self.policies.get(policy_id)
        if policy is None:
            return None
        at = _aware(at)
        rules = list(policy.get("escalation_rules") or [])
        now_levels = resolve_escalation(policy, self.schedules, at)
        levels = []
        for lv in now_levels:
            sids = [t["id"] for t in rules[lv.rule_index].get("targets") or ()
                    if t.get("type") in ("schedule_reference", "schedule")]
            changes = [c for sid in sids
                       if (c := self.schedules[sid].next_change_after(at, horizon=horizon)) is not None]
            until = _utc(min(changes)) if changes else None
            nxt: tuple[OnCallUser, ...] = ()
            if until is not None:
                nxt = tuple(self.user(u) for u in resolve_escalation(policy, self.schedules, until)[lv.rule_index].user_ids)
            levels.append(LevelOnCall(lv.level, tuple(self.user(u) for u in lv.user_ids), until, nxt, until))
        ends = [lv.until for lv in levels if lv.until is not None]
        return OnCallSnapshot(policy_id, _utc(at), tuple(levels), "schedules", min(ends) if ends else None,
                              policy.get("name"))


# ---------------------------------------------------------------------------------------------
# REST /oncalls -> snapshots
# ---------------------------------------------------------------------------------------------

def snapshots_from_oncalls(entries: Iterable[Mapping[str, Any]], at: datetime,
                           policy_ids: Iterable[str] | None = None) -> dict[str, OnCallSnapshot]:
    """Group `GET /oncalls` entries (a window starting at or before `at`) into one snapshot per
    escalation policy: users on call at `at` per level; a level's `until` is the earliest end of its
    current entries or start of a later one; `next_users` are those on call at that instant."""
    at = _utc(_aware(at))
    by_ep: dict[str, list[tuple[int, OnCallUser, datetime | None, datetime | None]]] = {}
    names: dict[str, str | None] = {}
    for e in entries:
        ep = (e.get("escalation_policy") or {}).get("id")
        user = e.get("user") or {}
        if not ep or not user.get("id"):
            continue
        names[ep] = (e.get("escalation_policy") or {}).get("summary")
        start, end = _parse_dt(e.get("start")), _parse_dt(e.get("end"))
        by_ep.setdefault(ep, []).append((int(e.get("escalation_level") or 1),
                                         OnCallUser(user["id"], user.get("summary") or user.get("name"),
                                                    user.get("email")), start, end))
    wanted = list(dict.fromkeys(policy_ids)) if policy_ids else list(by_ep)
    out: dict[str, OnCallSnapshot] = {}
    for ep in wanted:
        rows = by_ep.get(ep, [])

        def covers(start: datetime | None, end: datetime | None, t: datetime) -> bool:
            return (start is None or start <= t) and (end is None or end > t)

        levels = []
        for n in sorted({r[0] for r in rows}):
            mine = [r for r in rows if r[0] == n]
            cur = [r for r in mine if covers(r[2], r[3], at)]
            bounds = [r[3] for r in cur if r[3] is not None] + [r[2] for r in mine if r[2] is not None and r[2] > at]
            until = _utc(min(bounds)) if bounds else None
            nxt = tuple(dict.fromkeys(r[1] for r in mine if until is not None and covers(r[2], r[3], until)))
            users = tuple(dict.fromkeys(r[1] for r in cur))
            if users or nxt:
                levels.append(LevelOnCall(n, users, until, nxt, until))
        ends = [lv.until for lv in levels if lv.until is not None]
        out[ep] = OnCallSnapshot(ep, at, tuple(levels), "rest", min(ends) if ends else None, names.get(ep))
    return out


class OnCallsReader(Protocol):  # PagerDutyCache or PagerDutyREST
    def list_oncalls(self, **kw: Any) -> Awaitable[list[dict]]: ...


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------

_NOTE_LUA = """
-- KEYS: 1 open zset of the user, 2 assignees set of the incident, 3 global load zset
-- ARGV: 1 incident, 2 user, 3 open (1|0), 4 now ms, 5 max age ms
local cutoff = tonumber(ARGV[4]) - tonumber(ARGV[5])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], 'NX', ARGV[4], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
local n = redis.call('ZCARD', KEYS[1])
if n > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('ZADD', KEYS[3], n, ARGV[2])
else
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
return n
"""


class OnCallStore:
    """On-call snapshots and per-user load in Redis, with local and REST fallbacks.

    `redis` may be None (CLI dry runs): then only the fallbacks answer and loads are unknown.
    `rest` is a PagerDutyCache (preferred: its 60 s cache absorbs repeated reads) or PagerDutyREST.
    `prefer`: who the refresher asks about a policy that is both in the schedules-as-code and in
    PagerDuty: "schedules" (default, same order as `who_is_on_call`) or "rest".
    `clock` returns the current aware datetime (tests pass a fixed one).
    """

    def __init__(self, redis: Any = None, *, rest: OnCallsReader | None = None,
                 schedules: SchedulesAsCode | None = None, policy_ids: Iterable[str] = (),
                 prefix: str = "pagerstream:oncall", namespace: str = "default", ttl_s: int = 300,
                 horizon: timedelta = timedelta(hours=24), max_open_age: timedelta = timedelta(days=7),
                 prefer: str = "schedules", clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if prefer not in ("rest", "schedules"):
            raise ValueError("prefer must be 'rest' or 'schedules'")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        _check_id(namespace, "namespace")
        self.redis = redis
        self.rest = rest
        self.schedules = schedules
        self.policy_ids = list(dict.fromkeys(policy_ids))
        self.prefix = f"{prefix}:{namespace}"
        self.ttl = timedelta(seconds=ttl_s)
        self.horizon = horizon
        self.max_open_age = max_open_age
        self.prefer = prefer
        self.clock = clock
        self._note = redis.register_script(_NOTE_LUA) if redis is not None else None

    def __repr__(self) -> str:
        return f"OnCallStore(prefix={self.prefix!r}, rest={self.rest!r}, schedules={self.schedules is not None})"

    # -- keys --------------------------------------------------------------------------------------
    def _ep_key(self, pid: str) -> str:
        return f"{self.prefix}:ep:{_check_id(pid, 'escalation policy id')}"

    def _open_key(self, uid: str) -> str:
        return f"{self.prefix}:open:{_check_id(uid, 'user id')}"

    def _assignees_key(self, iid: str) -> str:
        return f"{self.prefix}:assignees:{_check_id(iid, 'incident id')}"

    @property
    def _load_key(self) -> str:
        return f"{self.prefix}:load"

    # -- snapshots in Redis ------------------------------------------------------------------------
    def _expires_at(self, snap: OnCallSnapshot) -> datetime:
        cap = snap.at + self.ttl
        return min(cap, snap.valid_until) if snap.valid_until is not None else cap

    async def store_snapshot(self, snap: OnCallSnapshot) -> bool:
        """Write a snapshot (one hash per policy, a field per level); False if it is already stale."""
        if self.redis is None:
            return False
        exp = self._expires_at(snap)
        if exp <= self.clock():
            return False
        d = snap.to_dict()
        meta = {k: d[k] for k in ("policy_id", "policy_name", "at", "source", "valid_until")}
        meta["expires_at"] = exp.isoformat()
        fields = {"meta": json.dumps(meta)}
        for lv in d["levels"]:
            fields[f"level:{lv['level']}"] = json.dumps(lv)
        key = self._ep_key(snap.policy_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=fields)
                # relative expiry: the store's clock may be a test clock, Redis counts real time
                pipe.pexpire(key, max(1, _ms(exp) - _ms(self.clock())))
                await pipe.execute()
        except (RedisError, OSError) as e:
            log.warning("on-call store: could not write %s (%s)", snap.policy_id, type(e).__name__)
            return False
        return True

    def _decode(self, raw: Mapping[Any, Any]) -> tuple[OnCallSnapshot, datetime] | None:
        if not raw:
            return None
        txt = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
               for k, v in raw.items()}
        if "meta" not in txt:
            return None
        meta = json.loads(txt["meta"])
        levels = sorted((json.loads(v) for k, v in txt.items() if k.startswith("level:")), key=lambda x: x["level"])
        snap = OnCallSnapshot.from_dict({**meta, "levels": levels}, source=f"redis:{meta.get('source')}")
        return snap, _parse_dt(meta["expires_at"])

    def _fresh_for(self, item: tuple[OnCallSnapshot, datetime] | None, at: datetime) -> OnCallSnapshot | None:
        if item is None:
            return None
        snap, exp = item
        return snap if snap.at <= at < exp else None

    async def cached(self, policy_id: str, at: datetime | None = None) -> OnCallSnapshot | None:
        """The Redis snapshot of `policy_id` if it describes `at` (default: now), else None."""
        if self.redis is None:
            return None
        at = _aware(at) if at is not None else self.clock()
        try:
            raw = await self.redis.hgetall(self._ep_key(policy_id))
        except (RedisError, OSError) as e:
            log.warning("on-call store: Redis unavailable (%s); falling back", type(e).__name__)
            return None
        return self._fresh_for(self._decode(raw), at)

    # -- fallbacks ---------------------------------------------------------------------------------
    async def _from_rest(self, policy_ids: list[str], at: datetime) -> dict[str, OnCallSnapshot]:
        if self.rest is None or not policy_ids:
            return {}
        since = at.astimezone(UTC).replace(second=0, microsecond=0)  # minute-aligned: cache-friendly
        entries = await self.rest.list_oncalls(escalation_policy_ids=policy_ids, since=since.isoformat(),
                                               until=(since + self.horizon).isoformat())
        return snapshots_from_oncalls(entries, at, policy_ids)

    def _from_schedules(self, policy_id: str, at: datetime) -> OnCallSnapshot | None:
        if self.schedules is None:
            return None
        return self.schedules.snapshot(policy_id, at)

    def _is_now(self, snap: OnCallSnapshot) -> bool:
        now = self.clock()
        return snap.at <= now < self._expires_at(snap) and now - snap.at < timedelta(minutes=1)

    async def who_is_on_call(self, policy_id: str, at: datetime | str | None = None) -> OnCallSnapshot | None:
        """On-call of one escalation policy at `at` (default now): Redis, else schedules-as-code, else
        REST. None if no source knows the policy."""
        at = _utc(_aware(at)) if at is not None else self.clock()
        snap = await self.cached(policy_id, at)
        if snap is not None:
            return snap
        snap = self._from_schedules(policy_id, at)
        if snap is None:
            snap = (await self._from_rest([policy_id], at)).get(policy_id)
        if snap is not None and self._is_now(snap):
            await self.store_snapshot(snap)
        return snap

    async def refresh(self, policy_ids: Iterable[str] | None = None) -> dict[str, OnCallSnapshot]:
        """Re-read on-call for the policies (default: those given at construction plus all policies
        of the schedules-as-code) and store the snapshots. One REST call for all REST policies."""
        now = self.clock()
        ids = list(dict.fromkeys(policy_ids if policy_ids is not None else
                                 [*self.policy_ids, *(self.schedules.policies if self.schedules else ())]))
        local = set(self.schedules.policies) if self.schedules else set()
        if self.rest is not None and self.prefer == "rest":
            rest_ids = ids
        else:
            rest_ids = [i for i in ids if i not in local] if self.rest is not None else []
        out: dict[str, OnCallSnapshot] = {}
        if rest_ids or (self.rest is not None and self.prefer == "rest" and not ids):
            out.update(await self._from_rest(rest_ids, now) if rest_ids else
                       snapshots_from_oncalls(await self.rest.list_oncalls(), now))  # type: ignore[union-attr]
        for pid in ids:
            if pid not in out and pid in local:
                snap = self._from_schedules(pid, now)
                if snap is not None:
                    out[pid] = snap
        for snap in out.values():
            await self.store_snapshot(snap)
        return out

    # -- load ----------------------------------------------------------------------------------------
    async def note_assignment(self, user_id: str, incident_id: str, open: bool) -> int:
        """Record that `incident_id` is (open=True) or no longer (False) assigned to `user_id`.
        Idempotent. Returns the user's open incidents afterwards."""
        if self._note is None:
            raise RuntimeError("note_assignment needs Redis")
        now = self.clock()
        n = await self._note(keys=[self._open_key(user_id), self._assignees_key(incident_id), self._load_key],
                             args=[incident_id, user_id, "1" if open else "0", _ms(now),
                                   int(self.max_open_age.total_seconds() * 1000)])
        return int(n)

    async def set_assignees(self, incident_id: str, user_ids: Iterable[str]) -> None:
        """The incident is now assigned to exactly `user_ids` (a reassignment moves its weight)."""
        new = list(dict.fromkeys(user_ids))
        old = {m.decode() if isinstance(m, bytes) else m
               for m in await self.redis.smembers(self._assignees_key(incident_id))}  # type: ignore[union-attr]
        for u in sorted(old - set(new)):
            await self.note_assignment(u, incident_id, False)
        for u in new:
            await self.note_assignment(u, incident_id, True)

    async def close_incident(self, incident_id: str) -> None:
        """Resolved: the incident no longer weighs on anyone."""
        await self.set_assignees(incident_id, [])

    async def open_incidents(self, user_ids: Iterable[str]) -> dict[str, int]:
        """Open incidents per user (entries older than max_open_age not counted). {} without Redis."""
        users = list(dict.fromkeys(user_ids))
        if self.redis is None or not users:
            return {}
        cutoff = _ms(self.clock() - self.max_open_age)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for u in users:
                    pipe.zcount(self._open_key(u), cutoff, "+inf")
                counts = await pipe.execute()
        except (RedisError, OSError) as e:
            log.warning("on-call store: Redis unavailable (%s); loads unknown", type(e).__name__)
            return {}
        return {u: int(c) for u, c in zip(users, counts)}

    async def loads(self) -> list[tuple[str, int]]:
        """All users with open incidents, most loaded first."""
        rows = await self.redis.zrevrange(self._load_key, 0, -1, withscores=True)  # type: ignore[union-attr]
        return [(u.decode() if isinstance(u, bytes) else u, int(s)) for u, s in rows]

    # -- what routing reads --------------------------------------------------------------------------
    async def view(self, policy_ids: Iterable[str], at: datetime | str | None = None) -> OnCallView:
        """Snapshot for `route()`: the policies' on-call at `at` and the on-call users' loads.
        Cost: one Redis round trip per policy (concurrent) + one pipelined round trip for the loads;
        a Redis miss adds a local rendering or one REST call for that policy."""
        at = _utc(_aware(at)) if at is not None else self.clock()
        ids = [p for p in dict.fromkeys(policy_ids) if p]
        snaps = await asyncio.gather(*(self.who_is_on_call(p, at) for p in ids))
        policies = {p: s for p, s in zip(ids, snaps) if s is not None}
        users = [u.id for s in policies.values() for lv in s.levels for u in lv.users]
        return OnCallView(policies, await self.open_incidents(users))

    async def clear(self) -> int:
        """Delete every key of this store (tests, or a namespace being retired)."""
        if self.redis is None:
            return 0
        keys = [k async for k in self.redis.scan_iter(match=self.prefix + ":*")]
        return int(await self.redis.delete(*keys)) if keys else 0


async def run_refresher(store: OnCallStore, *, interval_s: float = 60.0, stop: asyncio.Event | None = None,
                        on_refresh: Callable[[dict[str, OnCallSnapshot]], Any] | None = None) -> None:
    """Refresh every `interval_s` until `stop` is set. Errors are logged and the loop goes on (the
    last snapshots stay usable until they expire; readers fall back after that)."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            snaps = await store.refresh()
            if on_refresh is not None:
                on_refresh(snaps)
        except Exception as e:  # noqa: BLE001 - a refresher must survive API/Redis hiccups
            log.warning("on-call refresh failed: %s", type(e).__name__)
        if stop.is_set():
            break
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass


# ---------------------------------------------------------------------------------------------
# the one call for the stream
# ---------------------------------------------------------------------------------------------

class Router:
    """`await Router(config, store).decide(incident, alert=alert)` -> RouteDecision.

    Two steps: the rule is chosen without on-call data (pure, ~tens of µs), then the on-call view of
    just the chosen escalation policy is read (one Redis HGETALL + one pipelined ZCOUNT round trip
    when the refresher keeps Redis warm) and the responder picked (pure)."""

    def __init__(self, config: RoutingConfig, store: OnCallStore | None = None) -> None:
        self.config = config
        self.store = store

    async def decide(self, incident: Any, at: datetime | str | int | None = None, *, alert: Any = None
                     ) -> RouteDecision:
        ctx = incident if isinstance(incident, IncidentContext) else IncidentContext.from_incident(incident, alert)
        if at is None:
            at = getattr(incident, "opened_at", None)
            if at is None:
                at = datetime.now(UTC)
        when = _aware(at)
        sel = self.config.select(ctx, when)
        view = None
        if self.store is not None and sel.target.escalation_policy:
            view = await self.store.view([sel.target.escalation_policy], when)
        return self.config.finish(ctx, when, sel, view)
