"""Redis read-through cache in front of the REST client, for configuration that changes rarely.

Only these reads are cached: services, escalation policies, schedules, on-calls, users, teams. Writes
and incidents never are (an incident's state is what webhooks and people change all the time).

* TTL per resource type (`DEFAULT_TTLS`): on-calls 60 s, schedules 5 min, the rest 15-30 min.
* Keys: `<prefix>:<scope>:<resource>:<list|item>:<id or ->:<digest of the query>`. The scope is the
  caller's `namespace`, or a digest of the API base URL; nothing in a key is derived from the token.
* `invalidate(resource_type, id=None)` drops one object (plus every cached list of that type, since a
  list may contain it) or the whole type, and the types that embed it (`DEPENDENTS`: a schedule,
  escalation policy or user change drops the cached on-calls). A per-type generation number guards
  against a read that started before the invalidation writing its stale answer after it.
* Prometheus counters per resource: hits, misses, invalidations, Redis errors (registry injectable);
  `hit_rate()` reads them back. While Redis is unavailable, reads go straight to the API.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Awaitable, Callable, Iterable, Mapping

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from pagerstream.pagerduty.rest import PagerDutyREST

log = logging.getLogger("pagerstream.pagerduty.cache")

DEFAULT_TTLS: dict[str, int] = {
    "services": 900,
    "escalation_policies": 900,
    "schedules": 300,
    "oncalls": 60,
    "users": 900,
    "teams": 1800,
}
CACHEABLE = frozenset(DEFAULT_TTLS)
# cached types whose objects embed (or are computed from) another type
DEPENDENTS: dict[str, tuple[str, ...]] = {
    "schedules": ("oncalls",),
    "escalation_policies": ("oncalls",),
    "users": ("oncalls",),
}

# Write only if nobody invalidated the type since the read began (generation unchanged).
_SET_IF_GEN_LUA = """
local gen = redis.call('GET', KEYS[3])
if (gen or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]) + 60)
return 1
"""


def _digest(params: Mapping[str, Any]) -> str:
    canon = json.dumps({k: v for k, v in params.items() if v is not None}, sort_keys=True, default=str,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:20]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


class PagerDutyCache:
    """Cached reads of PagerDuty configuration: `await cache.list_services()`, `await cache.get_user(id)`…"""

    def __init__(self, client: PagerDutyREST, redis: aioredis.Redis, *, namespace: str | None = None,
                 prefix: str = "pagerstream:pdrest", ttls: Mapping[str, int] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        unknown = set(ttls or {}) - CACHEABLE
        if unknown:
            raise ValueError(f"not cacheable: {sorted(unknown)} (cacheable: {sorted(CACHEABLE)})")
        self.client = client
        self.redis = redis
        self.ttls = {**DEFAULT_TTLS, **(ttls or {})}
        if any(int(t) <= 0 for t in self.ttls.values()):
            raise ValueError("TTLs must be positive seconds")
        scope = namespace or hashlib.sha256(client.base_url.encode()).hexdigest()[:12]
        if any(c in scope for c in ":*?[] ") or len(scope) > 64:
            raise ValueError("namespace must be up to 64 characters without ':', spaces or glob characters")
        self.prefix = f"{prefix}:{scope}"
        self.registry = registry if registry is not None else CollectorRegistry()
        self._hits = Counter("pagerstream_pd_cache_hits_total", "PagerDuty REST cache hits", ["resource"],
                             registry=self.registry)
        self._misses = Counter("pagerstream_pd_cache_misses_total", "PagerDuty REST cache misses (API reads)",
                               ["resource"], registry=self.registry)
        self._invalidations = Counter("pagerstream_pd_cache_invalidations_total",
                                      "PagerDuty REST cache invalidations", ["resource"], registry=self.registry)
        self._errors = Counter("pagerstream_pd_cache_redis_errors_total",
                               "Redis errors in the PagerDuty REST cache (reads fell through to the API)",
                               registry=self.registry)
        for r in CACHEABLE:  # export zeros from the start
            self._hits.labels(r)
            self._misses.labels(r)
            self._invalidations.labels(r)
        self._set_if_gen = redis.register_script(_SET_IF_GEN_LUA)

    def __repr__(self) -> str:
        return f"PagerDutyCache(prefix={self.prefix!r}, client={self.client!r})"

    # -- keys ------------------------------------------------------------------------------------

    def _index_key(self, resource: str) -> str:
        return f"{self.prefix}:{resource}:_index"

    def _gen_key(self, resource: str) -> str:
        return f"{self.prefix}:{resource}:_gen"

    def key_for(self, resource: str, obj_id: str | None, params: Mapping[str, Any]) -> str:
        kind, ident = ("item", obj_id) if obj_id is not None else ("list", "-")
        if obj_id is not None and any(c in obj_id for c in ":*?[] "):
            raise ValueError("unexpected characters in an object id")
        return f"{self.prefix}:{resource}:{kind}:{ident}:{_digest(params)}"

    # -- core ------------------------------------------------------------------------------------

    async def _cached(self, resource: str, obj_id: str | None, params: Mapping[str, Any],
                      load: Callable[[], Awaitable[Any]]) -> Any:
        if resource not in CACHEABLE:
            raise ValueError(f"{resource!r} is not cacheable")
        key = self.key_for(resource, obj_id, params)
        gen = "0"
        try:
            raw = await self.redis.get(key)
            if raw is not None:
                self._hits.labels(resource).inc()
                return json.loads(raw)
            gen = _text(await self.redis.get(self._gen_key(resource)) or "0")
        except (RedisError, OSError) as e:
            self._errors.inc()
            self._misses.labels(resource).inc()
            log.warning("PagerDuty cache: Redis unavailable (%s); reading %s from the API", type(e).__name__, resource)
            return await load()
        self._misses.labels(resource).inc()
        value = await load()
        try:
            await self._set_if_gen(keys=[key, self._index_key(resource), self._gen_key(resource)],
                                   args=[gen, json.dumps(value, separators=(",", ":")), int(self.ttls[resource])])
        except (RedisError, OSError) as e:
            self._errors.inc()
            log.warning("PagerDuty cache: could not store %s (%s)", resource, type(e).__name__)
        return value

    async def invalidate(self, resource_type: str, id: str | None = None) -> int:
        """Drop cached `resource_type` data: one object (and the lists of that type) or all of it,
        plus the dependent types. Returns the number of keys deleted."""
        if resource_type not in CACHEABLE:
            raise ValueError(f"{resource_type!r} is not cached (cacheable: {sorted(CACHEABLE)})")
        deleted = await self._invalidate_one(resource_type, id)
        for dep in DEPENDENTS.get(resource_type, ()):
            deleted += await self._invalidate_one(dep, None)
        return deleted

    async def _invalidate_one(self, resource: str, obj_id: str | None) -> int:
        self._invalidations.labels(resource).inc()
        idx = self._index_key(resource)
        await self.redis.incr(self._gen_key(resource))
        members = [_text(m) for m in await self.redis.smembers(idx)]  # type: ignore[misc]
        if obj_id is None:
            doomed = members
        else:
            item_part = f":{resource}:item:{obj_id}:"
            doomed = [m for m in members if item_part in m or f":{resource}:list:" in m]
        if not doomed:
            return 0
        n = int(await self.redis.delete(*doomed))
        await self.redis.srem(idx, *doomed)  # type: ignore[misc]
        return n

    async def clear(self) -> int:
        """Drop everything this cache holds (all types)."""
        n = 0
        for r in sorted(CACHEABLE):
            n += await self._invalidate_one(r, None)
            await self.redis.delete(self._index_key(r))
        return n

    def hit_rate(self, resource: str | None = None) -> float | None:
        """Hits / (hits + misses) for one resource type or all; None before the first lookup."""
        names = [resource] if resource else sorted(CACHEABLE)
        hits = misses = 0.0
        for r in names:
            hits += self.registry.get_sample_value("pagerstream_pd_cache_hits_total", {"resource": r}) or 0.0
            misses += self.registry.get_sample_value("pagerstream_pd_cache_misses_total", {"resource": r}) or 0.0
        total = hits + misses
        return hits / total if total else None

    def counts(self, resource: str) -> tuple[int, int]:
        """(hits, misses) so far for one resource type."""
        h = self.registry.get_sample_value("pagerstream_pd_cache_hits_total", {"resource": resource}) or 0.0
        m = self.registry.get_sample_value("pagerstream_pd_cache_misses_total", {"resource": resource}) or 0.0
        return int(h), int(m)

    # -- cached reads ----------------------------------------------------------------------------

    @staticmethod
    def _norm(v: Iterable[str] | None) -> list[str] | None:
        return sorted(set(v)) if v else None

    async def list_services(self, *, query: str | None = None, team_ids: Iterable[str] | None = None,
                            include: Iterable[str] | None = None) -> list[dict]:
        p = {"query": query, "team_ids": self._norm(team_ids), "include": self._norm(include)}
        return await self._cached("services", None, p, lambda: self.client.list_services(
            query=query, team_ids=p["team_ids"], include=p["include"]))

    async def get_service(self, service_id: str, *, include: Iterable[str] | None = None) -> dict:
        p = {"include": self._norm(include)}
        return await self._cached("services", service_id, p,
                                  lambda: self.client.get_service(service_id, include=p["include"]))

    async def list_escalation_policies(self, *, query: str | None = None, user_ids: Iterable[str] | None = None,
                                       team_ids: Iterable[str] | None = None,
                                       include: Iterable[str] | None = None) -> list[dict]:
        p = {"query": query, "user_ids": self._norm(user_ids), "team_ids": self._norm(team_ids),
             "include": self._norm(include)}
        return await self._cached("escalation_policies", None, p, lambda: self.client.list_escalation_policies(
            query=query, user_ids=p["user_ids"], team_ids=p["team_ids"], include=p["include"]))

    async def get_escalation_policy(self, policy_id: str) -> dict:
        return await self._cached("escalation_policies", policy_id, {},
                                  lambda: self.client.get_escalation_policy(policy_id))

    async def list_schedules(self, *, query: str | None = None, since: str | None = None,
                             until: str | None = None, team_ids: Iterable[str] | None = None) -> list[dict]:
        p = {"query": query, "since": since, "until": until, "team_ids": self._norm(team_ids)}
        return await self._cached("schedules", None, p, lambda: self.client.list_schedules(
            query=query, since=since, until=until, team_ids=p["team_ids"]))

    async def get_schedule(self, schedule_id: str, *, since: str | None = None, until: str | None = None,
                           time_zone: str | None = None) -> dict:
        p = {"since": since, "until": until, "time_zone": time_zone}
        return await self._cached("schedules", schedule_id, p, lambda: self.client.get_schedule(
            schedule_id, since=since, until=until, time_zone=time_zone))

    async def list_oncalls(self, *, escalation_policy_ids: Iterable[str] | None = None,
                           schedule_ids: Iterable[str] | None = None, user_ids: Iterable[str] | None = None,
                           since: str | None = None, until: str | None = None,
                           earliest: bool | None = None) -> list[dict]:
        eps, scheds, users = self._norm(escalation_policy_ids), self._norm(schedule_ids), self._norm(user_ids)
        p = {"escalation_policy_ids": eps, "schedule_ids": scheds, "user_ids": users, "since": since,
             "until": until, "earliest": earliest}
        return await self._cached("oncalls", None, p, lambda: self.client.list_oncalls(
            escalation_policy_ids=eps, schedule_ids=scheds, user_ids=users, since=since, until=until,
            earliest=earliest))

    async def list_users(self, *, query: str | None = None, team_ids: Iterable[str] | None = None) -> list[dict]:
        p = {"query": query, "team_ids": self._norm(team_ids)}
        return await self._cached("users", None, p,
                                  lambda: self.client.list_users(query=query, team_ids=p["team_ids"]))

    async def get_user(self, user_id: str) -> dict:
        return await self._cached("users", user_id, {}, lambda: self.client.get_user(user_id))

    async def list_teams(self, *, query: str | None = None) -> list[dict]:
        return await self._cached("teams", None, {"query": query}, lambda: self.client.list_teams(query=query))

    async def get_team(self, team_id: str) -> dict:
        return await self._cached("teams", team_id, {}, lambda: self.client.get_team(team_id))
