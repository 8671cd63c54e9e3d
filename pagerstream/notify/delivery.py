"""The delivery stage: sends each notification once, whatever the channel.

`Delivery.deliver(notification, channel) -> Outcome` (or `submit`, which returns the future at once).
For every notification, keyed ``<incident>#<version>@<destination>``:

* **Idempotency.** Before a send, the keys are looked up in Redis (``pagerstream:<ns>notify:done:<hash>``);
  after a successful send they are written with ``SET NX EX`` (8 days). A replay or a rebalance that
  recomputes a delivered notification is skipped (`duplicate`). A crash between the send and the write
  can cause at most one more send. Sends for one (incident, destination) are serialised across workers
  by a short Redis lease (``...notify:lock:...``, held only while a call is in flight), so two workers
  replaying the same change do not both send it.
* **Retries.** Network errors, timeouts, 408, 429 and 5xx are retried with capped exponential backoff
  and full jitter (`processors.delivery.backoff_ms`); a ``Retry-After`` is honoured as given. Up to
  `DeliveryPolicy.max_attempts` attempts within `budget_s`, then dead letter. Permanent answers
  (other 4xx, bad configuration, a target refused by the outbound policy) are dead-lettered at once,
  with the provider's answer.
* **Rate limit and circuit breaker per destination, shared by all workers.** The token bucket is the
  PagerDuty forwarder's Redis Lua bucket (`streams.forwarder.RateLimiter`). The breaker is the
  forwarder's state machine (`processors.delivery.breaker_allows/breaker_on_result`) with its state in
  a Redis hash, updated with optimistic transactions (WATCH/MULTI), so every worker sees one breaker
  and only one half-open trial goes out. When Redis is unavailable, each falls back to local state.
* **Isolation.** Each destination has its own tasks and its own concurrency bound
  (`max_in_flight`); each call has a timeout (`call_timeout_s`). A hung destination only holds its own
  slots; others are not waiting behind it.
* **Bundling.** Changes of one incident for one destination are sent in order, one message at a time.
  The first goes out at once; what arrives while a message is in flight, during `bundle_window_s`
  after it, while the destination is rate-limited or while a retry waits, is folded into the next
  message: the latest state as `Notification.incident`, the earlier changes in `Notification.bundled`
  (oldest first). Every folded key is recorded as delivered with it.
* **Reporting.** `on_attempt(AttemptRecord)` for every attempt and every skip (for the incident's
  history); `on_dead_letter(notification, result)` once per dead-lettered message; Prometheus metrics
  in the registry given.

Time, sleeping and the jitter draw are injectable (`clock`, `sleep`, `rand`), so tests can check the
waits computed without waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import random
import time
import uuid
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError, WatchError

from pagerstream.notify.base import Channel, ChannelContext, DeliveryResult, Destination, Notification
from pagerstream.notify.outbound import result_for_exception
from pagerstream.processors import delivery as policy_fns
from pagerstream.processors.delivery import BreakerState
from pagerstream.processors.incident import short_hash
from pagerstream.streams.forwarder import RateLimiter

__all__ = [
    "AttemptRecord", "DeadLetter", "Delivery", "DeliveryMetrics", "DeliveryPolicy", "Outcome", "RedisRefStore",
    "ReplayReport", "fold", "notification_key", "parse_since", "replay",
]

log = logging.getLogger("pagerstream.notify.delivery")

OutcomeKind = Literal["delivered", "duplicate", "dead_letter", "deferred"]
_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
_BREAKER_CODE = {"closed": 0, "half_open": 1, "open": 2}
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def notification_key(incident: Mapping[str, Any], destination: str) -> str:
    """The idempotency key of one incident change for one destination."""
    return f"{incident['incident_id']}#{incident['version']}@{destination}"


def _h(text: str, n: int = 32) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


# --- public records --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryPolicy:
    max_attempts: int = 10
    budget_s: float = 600.0  # from the first attempt of a message to giving up
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    call_timeout_s: float = 15.0  # one channel.send
    bundle_window_s: float = 2.0
    max_in_flight: int = 4  # concurrent calls per destination
    max_pending: int = 10_000  # queued changes per destination before new ones are deferred
    breaker_failures: int = 5
    breaker_open_s: float = 30.0
    breaker_poll_s: float = 1.0  # how often a waiting message looks at a half-open breaker again
    lock_poll_s: float = 0.5
    dedup_ttl_s: int = 8 * 86_400


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    key: str
    destination: str
    attempts: int = 0
    result: DeliveryResult | None = None  # the provider's last answer (dead_letter: why)
    bundled_into: str | None = None  # this change went out inside the message with this key
    reason: str = ""
    not_before: float | None = None  # deferred: epoch seconds before which a new try is pointless

    @property
    def ok(self) -> bool:
        return self.kind in ("delivered", "duplicate")


@dataclass(frozen=True)
class AttemptRecord:
    incident_id: str
    destination: str
    channel: str
    key: str
    attempt: int  # 1.. for calls; 0 when no call was made (duplicate, breaker/budget, deferred)
    status: int | None
    outcome: str  # delivered | retry | dead_letter | duplicate | deferred
    answer: str
    at: int  # epoch ms
    bundled_keys: tuple[str, ...] = ()
    wait_s: float | None = None  # retry: the pause before the next attempt

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bundled_keys"] = list(self.bundled_keys)
        return d


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message, as a JSON line (what `replay` reads)."""

    key: str
    destination: str
    channel: str
    incident: dict[str, Any]
    bundled: tuple[dict[str, Any], ...]
    status: int | None
    answer: str
    attempts: int
    failed_at: int  # epoch ms
    permanent: bool = False

    @classmethod
    def of(cls, n: Notification, result: DeliveryResult, *, at_ms: int | None = None) -> DeadLetter:
        return cls(key=n.key, destination=n.destination.name, channel=n.destination.channel,
                   incident=dict(n.incident), bundled=tuple(dict(b) for b in n.bundled), status=result.status,
                   answer=result.answer, attempts=n.attempt, permanent=result.permanent,
                   failed_at=int(time.time() * 1000) if at_ms is None else at_ms)

    def to_json(self) -> str:
        d = asdict(self)
        d["bundled"] = list(self.bundled)
        return json.dumps(d, separators=(",", ":"), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, line: str | bytes) -> DeadLetter:
        d = json.loads(line)
        if not isinstance(d, dict) or not isinstance(d.get("incident"), dict):
            raise ValueError("not a dead letter")  # noqa: TRY004 - bad input, as json.loads would say
        return cls(key=str(d["key"]), destination=str(d["destination"]), channel=str(d.get("channel") or ""),
                   incident=d["incident"], bundled=tuple(d.get("bundled") or ()), status=d.get("status"),
                   answer=str(d.get("answer") or ""), attempts=int(d.get("attempts") or 0),
                   failed_at=int(d.get("failed_at") or 0), permanent=bool(d.get("permanent")))

    def notification(self, destination: Destination) -> Notification:
        """A fresh notification (attempt 0) to `destination` - its current configuration."""
        return Notification(key=self.key, incident=self.incident, destination=destination, bundled=self.bundled)


def fold(notifications: Iterable[Notification], *, attempt: int = 0) -> Notification:
    """One message for several changes of one incident to one destination: the latest (highest
    version) as the incident, every earlier one in `bundled`, oldest first, each version once."""
    ns = sorted(notifications, key=lambda n: int(n.incident.get("version") or 0))
    if not ns:
        raise ValueError("nothing to fold")
    latest = ns[-1]
    top = int(latest.incident.get("version") or 0)
    earlier: dict[int, dict[str, Any]] = {}
    for n in ns:
        for b in (*n.bundled, n.incident):
            v = int(b.get("version") or 0)
            if v != top:
                earlier.setdefault(v, b)
    return Notification(key=latest.key, incident=latest.incident, destination=latest.destination,
                        bundled=tuple(earlier[v] for v in sorted(earlier)), attempt=attempt)


# --- metrics ---------------------------------------------------------------------------------------
class DeliveryMetrics:
    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, DeliveryMetrics]] = \
        weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter("pagerstream_notify_attempts", "Notification attempts and skips by outcome",
                                ["destination", "channel", "outcome"], registry=registry)
        self.latency = Histogram("pagerstream_notify_latency_seconds",
                                 "From the incident change to its delivery", ["destination"], registry=registry,
                                 buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
        self.breaker = Gauge("pagerstream_notify_breaker_state", "0 closed, 1 half-open, 2 open",
                             ["destination"], registry=registry)
        self.bundled = Counter("pagerstream_notify_bundled", "Changes sent inside a later change's message",
                               registry=registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> DeliveryMetrics:
        m = cls._by_registry.get(registry)
        if m is None:
            m = cls._by_registry[registry] = cls(registry)
        return m


# --- provider references (ChannelContext.refs) ------------------------------------------------------
class RedisRefStore:
    """Per (incident, destination) provider references in Redis (thread ts, issue key...), 30 days."""

    def __init__(self, redis: Any, *, namespace: str = "", ttl_s: int = 30 * 86_400) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_s = ttl_s

    def _key(self, incident_id: str, destination: str) -> str:
        return f"pagerstream:{self.namespace}notify:ref:{destination}:{_h(incident_id, 24)}"

    async def get(self, incident_id: str, destination: str) -> str | None:
        v = await self.redis.get(self._key(incident_id, destination))
        return v.decode() if isinstance(v, bytes) else v

    async def set(self, incident_id: str, destination: str, ref: str) -> None:
        await self.redis.set(self._key(incident_id, destination), ref, ex=self.ttl_s)


# --- internals -------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Entry:
    n: Notification
    channel: Channel
    fut: asyncio.Future[Outcome]


@dataclass(eq=False)
class _Group:
    """The changes of one incident for one destination."""

    entries: list[_Entry] = field(default_factory=list)  # waiting for the next message
    inflight: list[_Entry] = field(default_factory=list)  # in the message being sent/retried
    task: asyncio.Task[None] | None = None
    hold_until: float = 0.0


@dataclass(eq=False)
class _Lane:
    """One destination."""

    name: str
    sem: asyncio.Semaphore
    limiter: RateLimiter
    rate: tuple[float, int]
    groups: dict[str, _Group] = field(default_factory=dict)
    pending: int = 0
    local_breaker: BreakerState = field(default_factory=BreakerState)


class _Deferred(Exception):
    def __init__(self, reason: str, not_before: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_before = not_before


class Delivery:
    """The channel-agnostic delivery stage (see the module docstring)."""

    def __init__(self, redis: Any, ctx: ChannelContext, *, registry: CollectorRegistry,
                 policy: DeliveryPolicy | None = None, namespace: str = "",
                 on_attempt: Callable[[AttemptRecord], Awaitable[None] | None] | None = None,
                 on_dead_letter: Callable[[Notification, DeliveryResult], Awaitable[None] | None] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.redis = redis
        self.ctx = ctx
        self.policy = policy or DeliveryPolicy()
        self.namespace = namespace
        self.on_attempt = on_attempt
        self.on_dead_letter = on_dead_letter
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.metrics = DeliveryMetrics.for_registry(registry)
        self._lanes: dict[str, _Lane] = {}
        self._closing = False
        self._release = redis.register_script(_RELEASE_LUA) if redis is not None else None
        self._instance = uuid.uuid4().hex

    # --- keys ----------------------------------------------------------------------------------
    def _prefix(self) -> str:
        return f"pagerstream:{self.namespace}notify:"

    def done_key(self, key: str) -> str:
        return f"{self._prefix()}done:{_h(key)}"

    def lock_key(self, destination: str, incident_id: str) -> str:
        return f"{self._prefix()}lock:{destination}:{_h(incident_id, 24)}"

    def breaker_key(self, destination: str) -> str:
        return f"{self._prefix()}breaker:{destination}"

    def bucket_key(self, destination: str) -> str:
        """The Redis key of the destination's token bucket (named by streams.forwarder.RateLimiter)."""
        return f"pagerstream:bucket:{short_hash(self._bucket_id(destination), 24)}"

    def _bucket_id(self, destination: str) -> str:
        return f"notify:{self.namespace}{destination}"

    # --- public API ----------------------------------------------------------------------------
    def submit(self, n: Notification, channel: Channel) -> asyncio.Future[Outcome]:
        """Queue one notification; the future resolves with its Outcome. Never blocks."""
        loop = asyncio.get_running_loop()
        lane = self._lane(n.destination)
        if self._closing:
            return self._resolved(loop, Outcome("deferred", n.key, lane.name, reason="delivery is shutting down"))
        g = lane.groups.get(n.incident_id)
        if g is not None:
            for e in (*g.entries, *g.inflight):
                if e.n.key == n.key:  # the same change twice (replay overlapping the live stream)
                    return e.fut
        if lane.pending >= self.policy.max_pending:
            return self._resolved(loop, Outcome("deferred", n.key, lane.name,
                                                reason=f"more than {self.policy.max_pending} changes queued"))
        if g is None:
            g = lane.groups[n.incident_id] = _Group()
        e = _Entry(n, channel, loop.create_future())
        g.entries.append(e)
        lane.pending += 1
        if g.task is None:
            g.task = loop.create_task(self._run_group(lane, n.incident_id, g),
                                      name=f"notify:{lane.name}:{n.incident_id}")
        return e.fut

    async def deliver(self, n: Notification, channel: Channel) -> Outcome:
        """Deliver one notification (see the module docstring). To fan one change out to several
        destinations, `submit` to each and gather the futures: each destination proceeds alone."""
        return await asyncio.shield(self.submit(n, channel))

    async def close(self) -> None:
        """Stop: whatever has not been delivered yet resolves as `deferred`."""
        self._closing = True
        tasks = [g.task for lane in self._lanes.values() for g in lane.groups.values() if g.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # noqa: BLE001 - the task logs its own failures
                log.debug("notify task ended with %s", type(exc).__name__)
        for lane in self._lanes.values():
            for g in lane.groups.values():
                for e in (*g.inflight, *g.entries):
                    if not e.fut.done():
                        e.fut.set_result(Outcome("deferred", e.n.key, lane.name, reason="delivery was stopped"))
            lane.groups.clear()
            lane.pending = 0

    async def breaker(self, destination: str) -> BreakerState:
        """The shared breaker state of a destination (as Redis has it; the local one without Redis)."""
        try:
            if self.redis is None:
                raise ConnectionError("no Redis client")
            return _decode_breaker(await self.redis.hgetall(self.breaker_key(destination)))
        except _REDIS_ERRORS:
            lane = self._lanes.get(destination)
            return lane.local_breaker if lane else BreakerState()

    # --- lanes and groups ----------------------------------------------------------------------
    @staticmethod
    def _resolved(loop: asyncio.AbstractEventLoop, o: Outcome) -> asyncio.Future[Outcome]:
        f: asyncio.Future[Outcome] = loop.create_future()
        f.set_result(o)
        return f

    def _lane(self, d: Destination) -> _Lane:
        lane = self._lanes.get(d.name)
        rate = (float(d.rate_per_second), int(d.burst))
        if lane is None:
            lane = self._lanes[d.name] = _Lane(d.name, asyncio.Semaphore(max(1, self.policy.max_in_flight)),
                                               RateLimiter(self.redis, *rate), rate)
        elif lane.rate != rate:  # the configuration changed: same bucket key, new rate
            lane.limiter, lane.rate = RateLimiter(self.redis, *rate), rate
        return lane

    async def _run_group(self, lane: _Lane, incident_id: str, g: _Group) -> None:
        try:
            while g.entries:
                wait = g.hold_until - self.clock()
                if wait > 0:
                    await self.sleep(wait)  # the bundling window: changes queue up meanwhile
                g.inflight, g.entries = g.entries, []
                try:
                    await self._process(lane, incident_id, g)
                except _Deferred as d:
                    self._finish_deferred(lane, g, d)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.exception("notification delivery to %s failed unexpectedly", lane.name)
                    self._finish_deferred(lane, g, _Deferred(f"internal error ({type(e).__name__})"))
                g.inflight = []
                g.hold_until = self.clock() + self.policy.bundle_window_s
        finally:
            g.task = None
            if not g.entries and not g.inflight and lane.groups.get(incident_id) is g:
                del lane.groups[incident_id]

    def _take_new(self, g: _Group) -> None:
        if g.entries:
            g.inflight.extend(g.entries)
            g.entries = []

    # --- the loop for one message --------------------------------------------------------------
    async def _process(self, lane: _Lane, incident_id: str, g: _Group) -> None:
        p = self.policy
        start = self.clock()
        deadline = start + p.budget_s
        attempt = max(e.n.attempt for e in g.inflight)
        last: DeliveryResult | None = None
        channel = g.inflight[-1].channel
        have_token = False  # kept across breaker and lock waits, spent by a call
        while True:
            self._take_new(g)
            channel = g.inflight[-1].channel
            # 1. rate limit (shared token bucket); changes arriving meanwhile are folded in
            if not have_token:
                wait_ms = await lane.limiter.take(self._bucket_id(lane.name))
                if wait_ms > 0:
                    if self.clock() + wait_ms / 1000 > deadline:
                        await self._dead_letter(lane, g, channel, attempt, DeliveryResult(
                            ok=False, status=last.status if last else None,
                            answer="rate limit: no token within the retry budget"), call_made=False)
                        return
                    await self.sleep(wait_ms / 1000)
                    continue
                have_token = True
            # 2. circuit breaker (shared)
            allowed, wait = await self._breaker_allows(lane)
            if not allowed:
                if self.clock() + min(wait, p.breaker_poll_s) > deadline or attempt >= p.max_attempts:
                    why = "circuit breaker open" + (f"; last answer: {last.answer}" if last and last.answer else "")
                    await self._dead_letter(lane, g, channel, attempt, DeliveryResult(
                        ok=False, status=last.status if last else None, answer=why[:500]), call_made=False)
                    return
                await self.sleep(min(wait, p.breaker_poll_s))
                continue
            # 3. one sender per (incident, destination) across workers
            token = await self._lock(lane.name, incident_id)
            if token is None:
                if self.clock() + p.lock_poll_s > deadline:
                    raise _Deferred("another worker kept sending this incident to this destination",
                                    self.clock() + p.lock_poll_s)
                await self.sleep(p.lock_poll_s)
                continue
            try:
                self._take_new(g)
                # 4. idempotency: drop what was delivered already (by us earlier, or another worker)
                if not await self._drop_delivered(lane, g, channel):
                    return
                attempt += 1
                n = fold([e.n for e in g.inflight], attempt=attempt)
                channel = g.inflight[-1].channel
                async with lane.sem:
                    try:
                        r = await asyncio.wait_for(channel.send(n, self.ctx), p.call_timeout_s)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # noqa: BLE001 - timeouts, network errors, channel bugs
                        r = result_for_exception(e)
                if r.ok:
                    await self._mark_delivered([e.n.key for e in g.inflight], n.key)
            finally:
                await self._unlock(lane.name, incident_id, token)
            have_token = False
            last = r
            breaker_failure = not r.ok and not r.permanent and r.status != 429
            await self._breaker_result(lane, ok=not breaker_failure)
            now = self.clock()
            if r.ok:
                await self._delivered(lane, g, channel, n, r, now)
                return
            if r.permanent:
                await self._dead_letter(lane, g, channel, attempt, r, sent=n)
                return
            if attempt >= p.max_attempts:
                await self._dead_letter(lane, g, channel, attempt, replace(
                    r, answer=f"gave up after {attempt} attempts; last answer: {r.answer}"[:500]), sent=n)
                return
            if r.retry_after is not None and r.retry_after > 0:
                pause = float(r.retry_after)
            else:
                pause = policy_fns.backoff_ms(attempt, base_ms=int(p.backoff_base_s * 1000),
                                              cap_ms=int(p.backoff_cap_s * 1000), jitter=self.rand()) / 1000
            if now + pause > deadline:
                await self._dead_letter(lane, g, channel, attempt, replace(
                    r, answer=f"retry budget of {p.budget_s:g} s exhausted (next try in {pause:g} s); "
                              f"last answer: {r.answer}"[:500]), sent=n)
                return
            self.metrics.attempts.labels(lane.name, channel.kind, "retry").inc()
            await self._report(AttemptRecord(n.incident_id, lane.name, channel.kind, n.key, attempt, r.status,
                                             "retry", r.answer, int(now * 1000), _bundled_keys(g), pause))
            await self.sleep(pause)

    # --- finishing -----------------------------------------------------------------------------
    def _resolve_all(self, lane: _Lane, entries: list[_Entry], kind: OutcomeKind, carrier: str | None, attempts: int,
                     result: DeliveryResult | None, reason: str = "", not_before: float | None = None) -> None:
        for e in entries:
            if not e.fut.done():
                e.fut.set_result(Outcome(kind, e.n.key, lane.name, attempts, result,
                                         None if carrier in (None, e.n.key) else carrier, reason, not_before))
        lane.pending = max(0, lane.pending - len(entries))

    async def _delivered(self, lane: _Lane, g: _Group, channel: Channel, n: Notification, r: DeliveryResult,
                         now: float) -> None:
        entries, g.inflight = g.inflight, []
        self.metrics.attempts.labels(lane.name, channel.kind, "delivered").inc()
        if len(entries) > 1:
            self.metrics.bundled.inc(len(entries) - 1)
        for e in entries:
            at = e.n.incident.get("at")
            if isinstance(at, (int, float)) and not isinstance(at, bool):
                self.metrics.latency.labels(lane.name).observe(max(0.0, now - at / 1000))
        await self._report(AttemptRecord(n.incident_id, lane.name, channel.kind, n.key, n.attempt, r.status,
                                         "delivered", r.answer, int(now * 1000),
                                         tuple(e.n.key for e in entries if e.n.key != n.key)))
        self._resolve_all(lane, entries, "delivered", n.key, n.attempt, r)

    async def _dead_letter(self, lane: _Lane, g: _Group, channel: Channel, attempt: int, r: DeliveryResult, *,
                           sent: Notification | None = None, call_made: bool = True) -> None:
        entries, g.inflight = g.inflight, []
        n = fold([e.n for e in entries], attempt=attempt) if sent is None else sent
        now = self.clock()
        self.metrics.attempts.labels(lane.name, channel.kind, "dead_letter").inc()
        if len(entries) > 1:
            self.metrics.bundled.inc(len(entries) - 1)
        log.warning("notification %s to %s dead-lettered after %d attempt(s) (status %s)", n.key, lane.name,
                    attempt, r.status)
        await self._report(AttemptRecord(n.incident_id, lane.name, channel.kind, n.key,
                                         attempt if call_made else 0, r.status, "dead_letter", r.answer,
                                         int(now * 1000), tuple(e.n.key for e in entries if e.n.key != n.key)))
        if self.on_dead_letter is not None:
            await self._call(self.on_dead_letter, n, r)
        self._resolve_all(lane, entries, "dead_letter", n.key, attempt, r, r.answer)

    def _finish_deferred(self, lane: _Lane, g: _Group, d: _Deferred) -> None:
        entries, g.inflight = g.inflight, []
        for e in entries:
            self.metrics.attempts.labels(lane.name, e.channel.kind, "deferred").inc()
        self._resolve_all(lane, entries, "deferred", None, 0, None, d.reason, d.not_before)

    async def _drop_delivered(self, lane: _Lane, g: _Group, channel: Channel) -> bool:
        """Resolve the in-flight changes already recorded as delivered; False when none is left."""
        keys = [e.n.key for e in g.inflight]
        if self.redis is None:
            return True
        try:
            found = await self.redis.mget([self.done_key(k) for k in keys])
        except _REDIS_ERRORS as exc:
            log.warning("notify dedup unavailable (%s): sending without the check", type(exc).__name__)
            return True
        keep: list[_Entry] = []
        for e, v in zip(g.inflight, found):
            if v is None:
                keep.append(e)
                continue
            self.metrics.attempts.labels(lane.name, e.channel.kind, "duplicate").inc()
            await self._report(AttemptRecord(e.n.incident_id, lane.name, e.channel.kind, e.n.key, 0, None,
                                             "duplicate", "already delivered", int(self.clock() * 1000)))
            self._resolve_all(lane, [e], "duplicate", e.n.key, 0, None, "already delivered")
        g.inflight = keep
        return bool(keep)

    async def _mark_delivered(self, keys: list[str], carrier: str) -> None:
        value = json.dumps({"at": int(self.clock() * 1000), "in": carrier}, separators=(",", ":"))
        if self.redis is None:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.set(self.done_key(k), value, nx=True, ex=self.policy.dedup_ttl_s)
                await pipe.execute()
        except _REDIS_ERRORS as e:
            log.warning("notify dedup record not written (%s): a replay may send %s again", type(e).__name__,
                        carrier)

    # --- shared lock ---------------------------------------------------------------------------
    async def _lock(self, destination: str, incident_id: str) -> str | None:
        token = f"{self._instance}:{uuid.uuid4().hex[:8]}"
        lease_ms = int((self.policy.call_timeout_s + 10) * 1000)
        if self.redis is None:
            return ""
        try:
            ok = await self.redis.set(self.lock_key(destination, incident_id), token, nx=True, px=lease_ms)
        except _REDIS_ERRORS:
            return ""  # no Redis, no lock: at-least-once
        return token if ok else None

    async def _unlock(self, destination: str, incident_id: str, token: str) -> None:
        if not token or self._release is None:
            return
        try:
            await self._release(keys=[self.lock_key(destination, incident_id)], args=[token])
        except _REDIS_ERRORS:
            pass  # the lease expires on its own

    # --- shared breaker ------------------------------------------------------------------------
    async def _breaker_update(self, lane: _Lane, step: Callable[[BreakerState], tuple[Any, BreakerState]]) -> Any:
        key = self.breaker_key(lane.name)
        try:
            if self.redis is None:
                raise ConnectionError("no Redis client")
            async with self.redis.pipeline(transaction=True) as pipe:
                for _ in range(20):
                    try:
                        await pipe.watch(key)
                        st = _decode_breaker(await pipe.hgetall(key))
                        out, st2 = step(st)
                        if st2 != st:
                            pipe.multi()
                            pipe.hset(key, mapping=_encode_breaker(st2))
                            pipe.expire(key, 86_400)
                            await pipe.execute()
                        else:
                            await pipe.unwatch()
                        lane.local_breaker = st2
                        self.metrics.breaker.labels(lane.name).set(_BREAKER_CODE[st2.status])
                        return out
                    except WatchError:
                        continue
        except _REDIS_ERRORS as e:
            log.debug("notify breaker: Redis unavailable (%s); local state", type(e).__name__)
        out, st2 = step(lane.local_breaker)
        lane.local_breaker = st2
        self.metrics.breaker.labels(lane.name).set(_BREAKER_CODE[st2.status])
        return out

    async def _breaker_allows(self, lane: _Lane) -> tuple[bool, float]:
        now_ms = int(self.clock() * 1000)

        def step(st: BreakerState) -> tuple[tuple[bool, float], BreakerState]:
            allowed, st2 = policy_fns.breaker_allows(st, now_ms)
            if allowed:
                return (True, 0.0), st2
            until = st2.open_until_ms if st2.status == "open" else (st2.trial_started_ms or now_ms) + st2.open_ms
            return (False, max(0.001, (until - now_ms) / 1000)), st2

        return await self._breaker_update(lane, step)

    async def _breaker_result(self, lane: _Lane, *, ok: bool) -> None:
        now_ms = int(self.clock() * 1000)
        p = self.policy

        def step(st: BreakerState) -> tuple[None, BreakerState]:
            return None, policy_fns.breaker_on_result(st, ok, now_ms, failure_threshold=p.breaker_failures,
                                                      open_ms=int(p.breaker_open_s * 1000))

        await self._breaker_update(lane, step)

    # --- callbacks -----------------------------------------------------------------------------
    async def _report(self, rec: AttemptRecord) -> None:
        if self.on_attempt is not None:
            await self._call(self.on_attempt, rec)

    @staticmethod
    async def _call(fn: Callable[..., Any], *args: Any) -> None:
        try:
            res = fn(*args)
            if inspect.isawaitable(res):
                await res
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing callback must not stop deliveries
            log.error("notification callback %s failed: %s", getattr(fn, "__name__", "?"), type(e).__name__)


def _bundled_keys(g: _Group) -> tuple[str, ...]:
    keys = [e.n.key for e in g.inflight]
    return tuple(keys[:-1]) if len(keys) > 1 else ()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _decode_breaker(raw: Mapping[Any, Any]) -> BreakerState:
    if not raw:
        return BreakerState()
    d = {_s(k): _s(v) for k, v in raw.items()}
    status = d.get("status", "closed")
    if status not in _BREAKER_CODE:
        return BreakerState()
    trial = d.get("trial_started_ms", "")
    return BreakerState(status=status, failures=int(d.get("failures") or 0),  # type: ignore[arg-type]
                        open_until_ms=int(d.get("open_until_ms") or 0), open_ms=int(d.get("open_ms") or 0),
                        trial_started_ms=int(trial) if trial else None, reason=d.get("reason", ""))


def _encode_breaker(st: BreakerState) -> dict[str, str]:
    return {"status": st.status, "failures": str(st.failures), "open_until_ms": str(st.open_until_ms),
            "open_ms": str(st.open_ms), "trial_started_ms": "" if st.trial_started_ms is None
            else str(st.trial_started_ms), "reason": st.reason}


# --- replay from the dead-letter list ------------------------------------------------------------
@dataclass
class ReplayReport:
    read: int = 0
    matched: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key or line number, why)
    outcomes: dict[str, int] = field(default_factory=dict)
    would_send: list[str] = field(default_factory=list)  # dry run: the keys


def parse_since(value: str | None, *, now: float | None = None) -> int | None:
    """--since: '90m', '2h', '7d', '30s', an ISO 8601 date-time, or epoch milliseconds -> epoch ms."""
    if value is None or not value.strip():
        return None
    v = value.strip()
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    if v[-1:] in units and v[:-1].replace(".", "", 1).isdigit():
        return int((now - float(v[:-1]) * units[v[-1]]) * 1000)
    if v.isdigit():
        return int(v)
    from pagerstream.pagerduty.webhooks import parse_occurred_at

    ms = parse_occurred_at(v)
    if ms is None:
        raise ValueError(f"--since: expected 90m/2h/7d, an ISO 8601 date-time or epoch ms, got {v[:40]!r}")
    return ms


async def _lines(source: Iterable[str | bytes] | AsyncIterable[str | bytes]) -> AsyncIterable[str | bytes]:
    if isinstance(source, AsyncIterable):
        async for x in source:
            yield x
    else:
        for x in source:
            yield x


async def replay(source: Iterable[str | bytes] | AsyncIterable[str | bytes], *, delivery: Delivery | None,
                 channels: Mapping[str, Channel], destinations: Mapping[str, Destination],
                 destination: str | None = None, since_ms: int | None = None, dry_run: bool = False,
                 ) -> ReplayReport:
    """Send dead letters (JSON lines, `DeadLetter.to_json`) again, to the destinations' *current*
    configuration, through the delivery stage (so a key delivered meanwhile is skipped as a duplicate).
    Filters: one destination, dead-lettered at or after `since_ms`. Each key once."""
    rep = ReplayReport()
    seen: set[str] = set()
    futs: list[asyncio.Future[Outcome]] = []
    i = 0
    async for line in _lines(source):
        i += 1
        if not (line.strip() if isinstance(line, (str, bytes)) else line):
            continue
        rep.read += 1
        try:
            dl = DeadLetter.from_json(line)
        except (ValueError, KeyError, TypeError):
            rep.skipped.append((f"line {i}", "not a dead letter"))
            continue
        if destination is not None and dl.destination != destination:
            continue
        if since_ms is not None and dl.failed_at < since_ms:
            continue
        if dl.key in seen:
            continue
        seen.add(dl.key)
        d = destinations.get(dl.destination)
        if d is None:
            rep.skipped.append((dl.key, f"destination {dl.destination!r} is not configured any more"))
            continue
        ch = channels.get(d.channel)
        if ch is None:
            rep.skipped.append((dl.key, f"no channel {d.channel!r} available"))
            continue
        rep.matched += 1
        if dry_run or delivery is None:
            rep.would_send.append(dl.key)
            continue
        futs.append(delivery.submit(dl.notification(d), ch))
    for o in await asyncio.gather(*futs):
        rep.outcomes[o.kind] = rep.outcomes.get(o.kind, 0) + 1
    return rep
